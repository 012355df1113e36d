using System.ComponentModel;
using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Cluster.Contracts;
using Cluster.Contracts.Training;
using Cluster.Coordinator.Orchestration;
using Cluster.Coordinator.Planning;
using Cluster.Coordinator.Specs;
using Cluster.GpuWorker.Models;
using Cluster.Hosting;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Datasets;
using Cluster.Storage.Files;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

public sealed class SweepRunSettings : GlobalSettings
{
    [CommandArgument(0, "<SPEC>")]
    [Description("A sweep spec (YAML, DESIGN.md's format; examples/ has several). Every field with one value: one trial.")]
    public string Spec { get; init; } = "";

    [CommandOption("--timeout <SECONDS>")]
    [Description("Give up waiting after this long (0: wait until done); the sweep goes on in the service.")]
    [DefaultValue(0)]
    public int TimeoutSeconds { get; init; }
}

/// <summary>
/// `coordinator sweep run SPEC`: checks the spec and its data (every bad value is one line, exit 2, before any work is
/// sent), makes sure of the feature sets the trial trains on (the cache, or an extraction), submits the sweep to the
/// coordinator service, shows the trial's progress, and prints the results (DESIGN.md's format with `--format json`).
/// </summary>
public sealed class SweepRunCommand : AsyncCommand<SweepRunSettings>
{
    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(250);

    public override async Task<int> ExecuteAsync(CommandContext context, SweepRunSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        if (!File.Exists(settings.Spec))
        {
            throw new ClusterConfigurationException($"spec '{settings.Spec}' does not exist.");
        }
        SweepSpec spec = SweepSpec.Load(settings.Spec);
        TrialChoice choice = spec.SingleTrial();
        TrialPlanner.Check(spec, choice);
        ArchitectureInfo architecture = ModelCatalog.Find(choice.Model);
        string? weightsSha256 = await WeightsStaging.CheckSpecFileAsync(spec, choice, cancellationToken);
        await cli.RequireBrokerAsync(cancellationToken);
        await cli.RequireDatabaseAsync(cancellationToken);
        var store = new FileStore(cli.Settings.StorageRoot);
        TrialDatasets datasets = await SpecDatasets.ScanAsync(spec, store, cancellationToken);
        (string weights, string weightsHash) = await StageWeightsAsync(choice, weightsSha256, store, cancellationToken);
        var sweepId = Guid.NewGuid();
        var trialId = Guid.NewGuid();
        // Planned once without features first: every check of the data runs before anything is extracted or sent.
        TrialPlanner.Plan(spec, choice, datasets, weights, weightsHash, trialId, 0);

        using IHost host = cli.BuildHost(coordinatorService: false);
        await host.StartAsync(cancellationToken);
        try
        {
            var clock = Stopwatch.StartNew();
            var features = new Dictionary<FeatureNeed, string>();
            foreach (FeatureNeed need in TrialPlanner.FeatureNeeds(choice, datasets))
            {
                ExtractionRequest request = TrialPlanner.ExtractionFor(need, choice, CanonicalLayer(architecture, need.Layer), weights, weightsHash);
                features[need] = await FeatureSetRunner.EnsureAsync(host, cli, store, request, settings.Format == OutputFormat.Table, cancellationToken);
            }
            PlannedTrial trial = TrialPlanner.Plan(spec, choice, datasets, weights, weightsHash, trialId, 0, features);
            ISendEndpoint coordinator = await host.Services.GetRequiredService<ISendEndpointProvider>().GetSendEndpoint(new Uri($"queue:{QueueNames.Coordinator}"));
            await coordinator.Send(new SubmitSweep
            {
                SweepId = sweepId,
                Name = spec.Name,
                SpecText = spec.Text,
                SpecHash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(spec.Text))),
                Trials = [trial],
            }, cancellationToken);
            bool done = await WaitAsync(settings, cli, sweepId, trial, cancellationToken);
            SweepResults results = await SweepResults.LoadAsync(cli.Database, sweepId, cancellationToken);
            Report(settings, results, clock.Elapsed);
            if (!done)
            {
                Console.Error.WriteLine($"coordinator: error: sweep {sweepId} not finished after {settings.TimeoutSeconds} s (is a gpu-worker running? see `coordinator workers`).");
                return 1;
            }
            TrialResult? failed = results.Trials.FirstOrDefault(t => t.Status == "failed");
            if (failed is not null)
            {
                Console.Error.WriteLine($"coordinator: trial {failed.Id} failed: {failed.Failure}");
            }
            return results.Status == "failed" ? 1 : 0;
        }
        finally
        {
            await host.StopAsync(CancellationToken.None);
        }
    }

    private static string CanonicalLayer(ArchitectureInfo architecture, string tap)
    {
        using Backbone model = architecture.Build();
        return model.Steps[model.ResolveTap(tap)].Name;
    }

    /// <summary>What the trial's messages name as its weights (a staged file, or builtin/random) and their hash.</summary>
    private static async Task<(string Weights, string Hash)> StageWeightsAsync(TrialChoice choice, string? sha256, FileStore store, CancellationToken ct)
    {
        if (WeightsStaging.UnstagedHash(choice) is string unstaged)
        {
            return (choice.Weights.Kind == SpecWeightsKind.Builtin ? "builtin" : "random", unstaged);
        }
        return (await WeightsStaging.StageAsync(store, choice.Weights.FullPath!, sha256!, ct), WeightsStaging.HashName(sha256!));
    }

    /// <summary>Follows the trial through the database until the sweep ends (or the timeout), with a progress bar in a terminal.</summary>
    private static async Task<bool> WaitAsync(SweepRunSettings settings, CliContext cli, Guid sweepId, PlannedTrial trial, CancellationToken ct)
    {
        TimeSpan deadline = settings.TimeoutSeconds > 0 ? TimeSpan.FromSeconds(settings.TimeoutSeconds) : Timeout.InfiniteTimeSpan;
        var clock = Stopwatch.StartNew();
        async Task<(SweepStatus? Sweep, TrialRecord? Trial)> PollAsync()
        {
            await using ClusterDbContext db = cli.Database.CreateDbContext();
            SweepRecord? sweep = await db.Sweeps.AsNoTracking().SingleOrDefaultAsync(s => s.Id == sweepId, ct);
            TrialRecord? record = await db.Trials.AsNoTracking().SingleOrDefaultAsync(t => t.Id == trial.TrialId, ct);
            return (sweep?.Status, record);
        }
        bool Finished(SweepStatus? s) => s is SweepStatus.Completed or SweepStatus.Failed or SweepStatus.Cancelled;
        bool TimedOut() => deadline != Timeout.InfiniteTimeSpan && clock.Elapsed > deadline;

        if (settings.Format == OutputFormat.Json || Console.IsOutputRedirected)
        {
            while (true)
            {
                (SweepStatus? status, _) = await PollAsync();
                if (Finished(status))
                {
                    return true;
                }
                if (TimedOut())
                {
                    return false;
                }
                await Task.Delay(PollInterval, ct);
            }
        }
        bool finished = false;
        await AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .StartAsync(async progress =>
            {
                ProgressTask bar = progress.AddTask(Markup.Escape($"trial 0 {trial.Settings.Strategy}"), maxValue: 1.0);
                while (true)
                {
                    (SweepStatus? status, TrialRecord? record) = await PollAsync();
                    if (record?.Progress is string json && JsonSerializer.Deserialize<TrialProgress>(json, new JsonSerializerOptions(JsonSerializerDefaults.Web)) is TrialProgress p)
                    {
                        bar.Value = Math.Min(1.0, (p.Epoch + (double)p.Batch / Math.Max(1, p.Batches)) / Math.Max(1, p.Epochs));
                        bar.Description = Markup.Escape($"trial 0 {trial.Settings.Strategy}  epoch {p.Epoch + 1}/{p.Epochs} {p.Phase} batch {p.Batch}/{p.Batches}  loss {p.Loss:F4}  {p.ImagesPerSecond:F0} images/s");
                    }
                    else if (record?.Epoch is int epoch)
                    {
                        bar.Value = Math.Min(1.0, (epoch + 1.0) / Math.Max(1, record.Epochs));
                    }
                    if (Finished(status))
                    {
                        bar.Value = 1.0;
                        finished = true;
                        return;
                    }
                    if (TimedOut())
                    {
                        return;
                    }
                    await Task.Delay(PollInterval, ct);
                }
            });
        return finished;
    }

    private static void Report(SweepRunSettings settings, SweepResults results, TimeSpan elapsed)
    {
        if (settings.Format == OutputFormat.Json)
        {
            Console.Out.WriteLine(JsonSerializer.Serialize(results, SweepResults.Json));
            return;
        }
        var table = new Table().Border(TableBorder.Rounded)
            .Title($"sweep {Markup.Escape(results.Name)} ({results.Sweep}): {results.Status}, {elapsed.TotalSeconds:F1} s")
            .AddColumns("trial", "status", "strategy", "model", "cutoff", "head", "lr", "epochs", "val accuracy", "test accuracy", "seconds");
        foreach (TrialResult t in results.Trials)
        {
            string P(string name) => t.Params.TryGetPropertyValue(name, out var v) && v is not null ? v.ToString() : "";
            table.AddRow(t.Id[..8], t.Status, P("strategy"), P("model"), P("cutoff"), P("strategy") == "feature-extractor" ? P("head") : "", P("lr"),
                t.Epochs.ToString(System.Globalization.CultureInfo.InvariantCulture), Percent(t.ValAccuracy), Percent(t.TestAccuracy),
                t.Seconds.ToString("F1", System.Globalization.CultureInfo.InvariantCulture));
        }
        AnsiConsole.Write(table);
        foreach (TrialResult t in results.Trials.Where(t => t.Checkpoint is not null))
        {
            AnsiConsole.MarkupLine($"[grey]checkpoint:[/] {Markup.Escape(t.Checkpoint!)}");
        }
    }

    private static string Percent(double? value) => value is double v ? v.ToString("P2", System.Globalization.CultureInfo.InvariantCulture) : "";
}
