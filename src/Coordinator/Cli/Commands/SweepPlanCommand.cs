using System.ComponentModel;
using System.Globalization;
using System.Text.Json;
using Cluster.Coordinator.Planning;
using Cluster.Coordinator.Search;
using Cluster.Coordinator.Specs;
using Cluster.GpuWorker.Models;
using Cluster.Hosting;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Microsoft.EntityFrameworkCore;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

public sealed class SweepPlanSettings : GlobalSettings
{
    [CommandArgument(0, "<SPEC>")]
    [Description("A sweep spec (YAML, DESIGN.md's format; examples/ has several).")]
    public string Spec { get; init; } = "";

    [CommandOption("--show <N>")]
    [Description("Trials listed in the table (the JSON lists all).")]
    [DefaultValue(50)]
    public int Show { get; init; } = 50;
}

/// <summary>
/// `coordinator sweep plan SPEC`: what a sweep would do, with nothing run or sent: its trials, the feature sets they
/// share (and which the cache already holds), and what it costs in images through the frozen prefixes and in training
/// image-epochs, against the same sweep without sharing. Every trial is checked as `sweep run` checks it, so a bad
/// value fails here, with its line.
/// </summary>
public sealed class SweepPlanCommand : AsyncCommand<SweepPlanSettings>
{
    private static readonly JsonSerializerOptions s_json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, WriteIndented = true };

    public override async Task<int> ExecuteAsync(CommandContext context, SweepPlanSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        if (!File.Exists(settings.Spec))
        {
            throw new ClusterConfigurationException($"spec '{settings.Spec}' does not exist.");
        }
        SweepSpec spec = SweepSpec.Load(settings.Spec);
        // The similarity auto measures is cached under the storage root (the only thing a plan writes), so a second plan reads it back.
        SweepLayout layout = await SweepPlanner.LayoutAsync(spec, c => SpecDatasets.ScanAsync(spec, store: null, c), cancellationToken,
            new DomainSimilarityProbe(new Cluster.Storage.Files.FileStore(cli.Settings.StorageRoot)));
        // As `sweep run` decides it: which prefixes are stored and which each trial recomputes, under the budget.
        MaterializationPlan storage = await SweepLauncher.PlanStorageAsync(cli, spec, layout, cancellationToken);
        layout = storage.Apply(layout);
        TrialDatasets datasets = layout.Datasets;
        SearchPlan search = layout.Search;
        var sets = new Dictionary<string, FeatureSetView>(StringComparer.Ordinal);
        var requests = new Dictionary<string, ExtractionRequest>(StringComparer.Ordinal);
        double validationShare = datasets.Validation is null ? spec.Dataset.ValidationFraction ?? 0 : 0;
        int trainImages = (int)Math.Round(datasets.Train.Entries.Count * (1 - validationShare));
        var trials = new List<PlannedTrialView>();
        foreach (SweepTrialLayout trial in layout.Trials)
        {
            var keys = new List<string>();
            foreach ((FeatureNeed need, ExtractionRequest request) in trial.Features)
            {
                string key = request.Key.Value;
                keys.Add(key);
                if (!sets.TryGetValue(key, out FeatureSetView? set))
                {
                    requests[key] = request;
                    sets[key] = set = new FeatureSetView(key, request.Model, request.Layer, need.Pooling, trial.Choice.InputSize, need.Dataset.Id, need.Dataset.Entries.Count);
                }
                set.Trials++;
            }
            trials.Add(new PlannedTrialView(trial.Number, TrialPlanner.UsedParams(trial.Choice), keys, trainImages, trial.Choice.Epochs,
                trial.Choice.Strategy == SpecNames.FineTuneTop && trial.Choice.Augment == "none" && !trial.Features.Any(f => !f.Need.ForHead)));
        }
        var skipped = layout.Skipped.Select(s => new SkippedTrialView(s.Configuration, SweepSpec.Params(s.Choice), s.Reason)).ToList();

        await using (ClusterDbContext db = cli.Database.CreateDbContext())
        {
            string[] wanted = [.. sets.Keys];
            foreach (FeatureSetRecord record in await db.FeatureSets.AsNoTracking().Where(f => wanted.Contains(f.Key)).ToListAsync(cancellationToken))
            {
                sets[record.Key].Status = record.Status == FeatureSetStatus.Complete ? "cached" : $"partial ({record.ExtractedCount} of {record.ImageCount})";
                sets[record.Key].ImagesDone = record.Status == FeatureSetStatus.Complete ? record.ImageCount : record.ExtractedCount;
            }
        }

        IReadOnlyList<int>? rungs = (search.Method as AshaSearch)?.RungEpochs;
        // ASHA trains a trial to the top rung only if promoted: its cost lies between every trial stopping at the first
        // rung and every one reaching the top. Grid and random train each trial its own epochs.
        long Epochs(PlannedTrialView t, bool least) => rungs is null ? t.Epochs : least ? rungs[0] : rungs[^1];
        long Images(bool cached, bool least) => trials.Where(t => (t.FeatureSets.Count > 0) == cached).Sum(t => (long)t.TrainImages * Epochs(t, least));
        // Sets still to extract that one pass over the images computes together (taps of one backbone on one dataset).
        var toExtract = sets.Values.Where(s => s.Status != "cached").Select(s => requests[s.Key]).ToList();
        var cost = new PlanCost(
            ExtractionPasses: ExtractionPasses.Count(toExtract),
            SetsToExtract: toExtract.Count,
            ImagesToExtract: sets.Values.Sum(s => (long)(s.Images - s.ImagesDone)),
            ImagesCached: sets.Values.Sum(s => (long)s.ImagesDone),
            ImagesToExtractWithoutSharing: trials.Sum(t => t.FeatureSets.Sum(k => (long)sets[k].Images)),
            TrainingImageEpochsOnFeatures: Images(cached: true, least: false),
            TrainingImageEpochsThroughTheNetwork: Images(cached: false, least: false),
            TrainingImageEpochsAtLeast: rungs is null ? null : Images(true, true) + Images(false, true),
            ImagesThroughRecomputedPrefixes: storage.Decisions.Where(d => d.Action == PrefixAction.Recompute).Sum(d => d.RecomputeImages));
        var storageView = new StorageView(storage.BudgetBytes, storage.UsedBytes, storage.NewBytes, spec.Budget.Activations,
            [.. storage.Decisions.Select(d => new PrefixDecisionView(d.Prefix.KeyAt(d.Dtype), d.Prefix.Layer, d.Prefix.Pooling, d.Prefix.DatasetId, d.Prefix.Trials,
                d.Action.ToString().ToLowerInvariant(), d.Dtype, d.Prefix.BytesAt(d.Dtype), d.StoreImages, d.RecomputeImages, d.Reason))],
            [.. storage.Evictions.Select(e => new EvictionView(e.Key, e.Bytes, e.LastUsedAt))]);
        var auto = layout.AutoDecisions.Select(d => new AutoDecisionView(d.Model, d.Weights, d.InputSize, d.TrainImages, d.Classes, d.ImagesPerClass,
            d.Similarity, d.Measurement is null ? "given by auto.similarity" : "batch-norm statistics: KL of sample against recorded, averaged over channels and layers; score exp(-divergence)",
            d.Measurement?.Images, d.Measurement?.Layers, d.Measurement?.Divergence, d.Cached, d.SimilarAbove, d.BigFrom, d.Pick.Cell, d.Pick.Strategy, d.Pick.Cutoff, d.Reason)).ToList();
        var plan = new SweepPlanView(spec.Name, spec.Search.Method, trials.Count, spec.Parallelism, rungs, trials, skipped, [.. sets.Values], cost, storageView, auto);

        if (settings.Format == OutputFormat.Json)
        {
            Console.Out.WriteLine(JsonSerializer.Serialize(plan, s_json));
            return 0;
        }
        Render(spec, plan, settings.Show);
        return 0;
    }

    private static void Render(SweepSpec spec, SweepPlanView plan, int show)
    {
        CultureInfo c = CultureInfo.InvariantCulture;
        string[] varying = [.. spec.Hyperparameters.Where(v => !v.IsSingle).Select(v => v.Field)];
        string rungs = plan.Rungs is null ? "" : $", rungs at {string.Join(", ", plan.Rungs)} epochs";
        AnsiConsole.MarkupLine(Markup.Escape($"sweep {plan.Sweep}: {plan.Method} search, {plan.TrialCount} trials, {plan.Parallelism} at a time{rungs}"));
        foreach (AutoDecisionView d in plan.Auto)
        {
            // Plain, unwrapped: one line that can be read (and grepped) whole, as `sweep run` logs it.
            Console.Out.WriteLine(d.Reason);
        }
        var trials = new Table().Border(TableBorder.Rounded).AddColumn("trial");
        foreach (string field in varying)
        {
            trials.AddColumn(field);
        }
        trials.AddColumns("epochs", "trains on");
        foreach (PlannedTrialView t in plan.Trials.Take(show))
        {
            string Value(string field) => t.Params.TryGetValue(field, out object? v) ? v is double d ? d.ToString("G4", c) : Convert.ToString(v, c) ?? "" : "";
            trials.AddRow([t.Number.ToString(c), .. varying.Select(Value), t.Epochs.ToString(c),
                t.RecomputesPrefix ? "images, its frozen prefix recomputed" : t.FeatureSets.Count == 0 ? "images (whole network)" : $"cached features ({t.FeatureSets.Count} sets)"]);
        }
        AnsiConsole.Write(trials);
        if (plan.Trials.Count > show)
        {
            AnsiConsole.MarkupLine($"[grey]… and {plan.Trials.Count - show} more trials (--show N, or --format json for all)[/]");
        }
        foreach (SkippedTrialView t in plan.Skipped.Take(show))
        {
            AnsiConsole.MarkupLine($"[yellow]left out[/] configuration {t.Number}: {Markup.Escape(t.Reason)}");
        }
        if (plan.FeatureSets.Count > 0)
        {
            var sets = new Table().Border(TableBorder.Rounded).Title("feature sets (each computed once, shared by its trials)")
                .AddColumns("key", "layer", "pool", "input", "dataset", "images", "trials", "status");
            foreach (FeatureSetView s in plan.FeatureSets)
            {
                sets.AddRow(Markup.Escape(s.Key), Markup.Escape(s.Layer), s.Pooling, s.InputSize.ToString(c), s.Dataset[..Math.Min(12, s.Dataset.Length)], s.Images.ToString("N0", c), s.Trials.ToString(c), Markup.Escape(s.Status));
            }
            AnsiConsole.Write(sets);
        }
        RenderStorage(plan.Storage);
        PlanCost cost = plan.Cost;
        var rows = new List<(string, string)>
        {
            ("images through frozen prefixes", $"{cost.ImagesToExtract:N0} to extract, {cost.ImagesCached:N0} cached"),
            ("extraction passes", $"{cost.ExtractionPasses} pass(es) over the images for {cost.SetsToExtract} set(s): the taps of one backbone share a pass"),
            ("without sharing (--no-share)", $"{cost.ImagesToExtractWithoutSharing:N0} (each trial its own prefix)"),
            ("training on cached features", $"{cost.TrainingImageEpochsOnFeatures:N0} image-epochs"),
            ("training through the network", $"{cost.TrainingImageEpochsThroughTheNetwork:N0} image-epochs"),
        };
        if (cost.ImagesThroughRecomputedPrefixes > 0)
        {
            rows.Add(("prefixes recomputed in trials", $"{cost.ImagesThroughRecomputedPrefixes:N0} images through them (not stored: see storage)"));
        }
        if (cost.TrainingImageEpochsAtLeast is long least)
        {
            rows.Add(("asha: if no trial is promoted", $"{least:N0} image-epochs (the figures above: every trial reaches the top)"));
        }
        AnsiConsole.Write(CliOutput.KeyValueTable("cost", rows.Select(r => (r.Item1, string.Format(c, "{0}", r.Item2)))));
    }

    /// <summary>The materialization decisions: what is stored (at which dtype), what recomputed, and why, with the budget.</summary>
    private static void RenderStorage(StorageView storage)
    {
        CultureInfo c = CultureInfo.InvariantCulture;
        if (storage.Decisions.Count == 0)
        {
            return;
        }
        string budget = storage.BudgetBytes is long b
            ? $"budget {MaterializationPlanner.Size(b)}: {MaterializationPlanner.Size(storage.UsedBytes)} stored now, this sweep adds {MaterializationPlanner.Size(storage.NewBytes)}"
            : $"no storage budget: this sweep adds {MaterializationPlanner.Size(storage.NewBytes)}";
        var table = new Table().Border(TableBorder.Rounded).Title(Markup.Escape($"storage ({budget}; activations {storage.Activations})"))
            .AddColumns("layer", "pool", "dataset", "trials", "size", "decision", "images: stored / recomputed", "why");
        foreach (PrefixDecisionView d in storage.Decisions)
        {
            string decision = d.Action == "recompute" ? "[yellow]recompute[/]" : $"{d.Action} ({d.Dtype})";
            table.AddRow(Markup.Escape(d.Layer), d.Pooling, d.Dataset[..Math.Min(12, d.Dataset.Length)], d.Trials.ToString(c), MaterializationPlanner.Size(d.Bytes),
                decision, $"{d.StoreImages.ToString("N0", c)} / {d.RecomputeImages.ToString("N0", c)}", Markup.Escape(d.Reason));
        }
        AnsiConsole.Write(table);
        foreach (EvictionView e in storage.Evictions)
        {
            AnsiConsole.MarkupLine(Markup.Escape($"evicted first (no running sweep needs it): {e.Key}, {MaterializationPlanner.Size(e.Bytes)}, last used {e.LastUsedAt?.ToString("u", c) ?? "never recorded"}"));
        }
    }

    private sealed record SweepPlanView(string Sweep, string Method, int TrialCount, int Parallelism, IReadOnlyList<int>? Rungs,
        IReadOnlyList<PlannedTrialView> Trials, IReadOnlyList<SkippedTrialView> Skipped, IReadOnlyList<FeatureSetView> FeatureSets, PlanCost Cost, StorageView Storage,
        IReadOnlyList<AutoDecisionView> Auto);

    /// <summary>One `strategy: auto` decision: the data's size and similarity, how it was measured, the thresholds, the cell and the pick.</summary>
    private sealed record AutoDecisionView(string Model, string Weights, int InputSize, int TrainImages, int Classes, double ImagesPerClass, double Similarity,
        string Measure, int? SampleImages, int? BatchNorms, double? Divergence, bool Cached, double SimilarAbove, int BigFrom, string Cell, string Strategy,
        string? Cutoff, string Reason);

    private sealed record StorageView(long? BudgetBytes, long UsedBytes, long NewBytes, string Activations, IReadOnlyList<PrefixDecisionView> Decisions, IReadOnlyList<EvictionView> Evictions);

    /// <param name="Bytes">The set's size at its dtype; StoreImages and RecomputeImages: images through the prefix either way.</param>
    private sealed record PrefixDecisionView(string Key, string Layer, string Pooling, string Dataset, int Trials, string Action, string Dtype, long Bytes,
        long StoreImages, long RecomputeImages, string Reason);

    private sealed record EvictionView(string Key, long Bytes, DateTime? LastUsedAt);

    private sealed record SkippedTrialView(int Number, IReadOnlyDictionary<string, object> Params, string Reason);

    private sealed record PlannedTrialView(int Number, IReadOnlyDictionary<string, object> Params, IReadOnlyList<string> FeatureSets, int TrainImages, int Epochs,
        bool RecomputesPrefix);

    private sealed record FeatureSetView(string Key, string Model, string Layer, string Pooling, int InputSize, string Dataset, int Images)
    {
        public int Trials { get; set; }

        public string Status { get; set; } = "to extract";

        public int ImagesDone { get; set; }
    }

    private sealed record PlanCost(int ExtractionPasses, int SetsToExtract, long ImagesToExtract, long ImagesCached, long ImagesToExtractWithoutSharing,
        long TrainingImageEpochsOnFeatures, long TrainingImageEpochsThroughTheNetwork, long? TrainingImageEpochsAtLeast, long ImagesThroughRecomputedPrefixes);
}
