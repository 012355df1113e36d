using System.Security.Cryptography;
using System.Text;
using Cluster.Hosting;
using Cluster.Contracts;
using Cluster.Contracts.Training;
using Cluster.Coordinator.Orchestration;
using Cluster.Coordinator.Planning;
using Cluster.Coordinator.Specs;
using Cluster.Storage.Files;
using MassTransit;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace Cluster.Coordinator.Cli;

/// <summary>A sweep as checked and laid out, ready to submit: nothing has been written or sent yet.</summary>
public sealed record PreparedSweep(SweepSpec Spec, SweepLayout Layout, FileStore Store);

/// <summary>
/// What `sweep run`, `sweep submit` and `coordinator demo` share: check a spec and its data (every problem one line,
/// exit 2, before anything is sent), stage its weights, make sure of each distinct feature set once (the cache, a
/// partial set resumed, or an extraction), and submit the sweep to the coordinator service.
/// </summary>
public static class SweepLauncher
{
    /// <summary>Every check that needs no bus: the spec, its datasets (scanned and saved for the workers), weights, every trial's data checks.</summary>
    public static async Task<PreparedSweep> PrepareAsync(CliContext cli, string specPath, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(cli);
        if (!File.Exists(specPath))
        {
            throw new ClusterConfigurationException($"spec '{specPath}' does not exist.");
        }
        SweepSpec spec = SweepSpec.Load(specPath);
        var store = new FileStore(cli.Settings.StorageRoot);
        SweepLayout layout = await SweepPlanner.LayoutAsync(spec, c => SpecDatasets.ScanAsync(spec, store, c), ct, new DomainSimilarityProbe(store));
        foreach (AutoDecision decision in layout.AutoDecisions)
        {
            // The same line `sweep plan` prints: what auto decided, from what.
            Console.Error.WriteLine($"coordinator: {decision.Reason}");
        }
        if (layout.Skipped.Count > 0)
        {
            Console.Error.WriteLine($"coordinator: {layout.Skipped.Count} of {layout.Search.Configurations} configurations left out (`coordinator sweep plan` lists each); the first: configuration {layout.Skipped[0].Configuration}, {layout.Skipped[0].Reason}");
        }
        return new PreparedSweep(spec, layout, store);
    }

    /// <summary>The sweep's materialization decisions against what the storage holds now (`sweep plan` prints the same).</summary>
    public static async Task<MaterializationPlan> PlanStorageAsync(CliContext cli, SweepSpec spec, SweepLayout layout, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(cli);
        ArgumentNullException.ThrowIfNull(spec);
        await cli.RequireDatabaseAsync(ct);
        StorageFacts facts;
        await using (Cluster.Storage.Database.ClusterDbContext db = cli.Database.CreateDbContext())
        {
            facts = await StorageBudget.LoadFactsAsync(db, DateTime.UtcNow, ct);
        }
        return MaterializationPlanner.Decide(StorageBudget.Candidates(layout), spec.Budget, $"{spec.Source} line {spec.Budget.Line}", facts);
    }

    /// <param name="share">False (`--no-share`): no trial reuses another's frozen prefix; feature-extractor trials extract
    /// their own features and fine-tune-top trials run their prefix on every batch, as sweep systems without sharing do.</param>
    /// <returns>The sweep's id.</returns>
    public static async Task<Guid> SubmitAsync(IHost host, CliContext cli, PreparedSweep sweep, bool share, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(host);
        ArgumentNullException.ThrowIfNull(cli);
        ArgumentNullException.ThrowIfNull(sweep);
        (SweepSpec spec, SweepLayout layout, FileStore store) = sweep;
        MaterializationPlan? storage = null;
        if (share)
        {
            // Which prefixes to store and which to recompute, under the budget; applied before any key is asked for.
            storage = await PlanStorageAsync(cli, spec, layout, ct);
            layout = storage.Apply(layout);
        }
        var staged = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (TrialWeights file in layout.Trials.Select(t => t.Weights).Where(w => w.FilePath is not null).DistinctBy(w => w.FilePath))
        {
            staged[file.FilePath!] = await WeightsStaging.StageAsync(store, file.FilePath!, file.Sha256!, ct);
        }
        var sweepId = Guid.NewGuid();
        // Every trial's feature sets, keyed: all are asked of the service in one message, so the sets one pass over the
        // images computes (taps of one backbone) are extracted in that pass and the rest side by side; then followed.
        var needs = new List<(Guid TrialId, string Weights, List<(FeatureNeed Need, ExtractionRequest Request)> Sets)>();
        var requests = new Dictionary<string, ExtractionRequest>(StringComparer.Ordinal);
        foreach (SweepTrialLayout trial in layout.Trials)
        {
            var trialId = Guid.NewGuid();
            string weights = trial.Weights.FilePath is string file ? staged[file] : trial.Choice.Weights.Kind == SpecWeightsKind.Builtin ? "builtin" : "random";
            var sets = new List<(FeatureNeed, ExtractionRequest)>();
            foreach ((FeatureNeed need, ExtractionRequest planned) in trial.Features)
            {
                if (!share && trial.Choice.Strategy != "feature-extractor")
                {
                    continue; // fine-tune-top without the cache: its frozen prefix runs on the trial's own images
                }
                ExtractionRequest request = planned with { WeightsPath = weights is "builtin" or "random" ? null : weights, Scope = share ? null : trialId.ToString() };
                requests.TryAdd(request.Key.Value, request);
                sets.Add((need, request));
            }
            needs.Add((trialId, weights, sets));
        }
        // Asked, not awaited: the sweep is submitted at once, and the scheduler holds each trial until its sets are
        // complete, so trials whose prefix is ready (cached, or needing none) train while the others are extracted.
        await FeatureSetRunner.RequestAllAsync(host, cli, requests.Values, ct, storage?.BudgetBytes is null ? null : storage);
        var trials = new List<PlannedTrial>();
        foreach ((SweepTrialLayout trial, var need) in layout.Trials.Zip(needs))
        {
            var sets = need.Sets.ToDictionary(s => s.Need, s => s.Request.Key.Value);
            trials.Add(TrialPlanner.Plan(spec, trial.Choice, layout.Datasets, need.Weights, trial.Weights.Hash, need.TrialId, trial.Number, sets));
        }
        ISendEndpoint coordinator = await host.Services.GetRequiredService<ISendEndpointProvider>().GetSendEndpoint(new Uri($"queue:{QueueNames.Coordinator}"));
        await coordinator.Send(new SubmitSweep
        {
            SweepId = sweepId,
            Name = spec.Name,
            SpecText = spec.Text,
            SpecHash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(spec.Text))),
            Trials = trials,
            Search = layout.Search.Settings,
            WallTimeSeconds = spec.Budget.WallTime?.TotalSeconds,
        }, ct);
        return sweepId;
    }
}
