using System.Text.Json;
using Cluster.Contracts.Training;
using Cluster.Coordinator.Specs;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Training;
using Cluster.Hosting;
using Cluster.Storage.Datasets;

namespace Cluster.Coordinator.Planning;

/// <summary>A trial's datasets as scanned (validation null when it is a fraction of train).</summary>
public sealed record TrialDatasets(DatasetManifest Train, DatasetManifest? Validation, DatasetManifest? Test);

/// <summary>The features a trial trains on, to be made sure of (extracted or found in the cache) before it is sent.</summary>
public sealed record FeatureNeed(DatasetManifest Dataset, string Layer, string Pooling, bool ForHead);

/// <summary>
/// Turns one trial's choice into what the service schedules (pure: no I/O, so its checks are unit-tested): the settings
/// the workers get, the data with its validation split, and the feature sets the strategy trains on. Every check that
/// needs the data (one class, an empty validation split, a test set with classes train does not have) is one line
/// naming the spec's line, the field and the value, thrown before any work is sent.
/// </summary>
public static class TrialPlanner
{
    public static IReadOnlyList<FeatureNeed> FeatureNeeds(TrialChoice choice, TrialDatasets datasets)
    {
        ArgumentNullException.ThrowIfNull(choice);
        ArgumentNullException.ThrowIfNull(datasets);
        DatasetManifest[] all = [datasets.Train, .. new[] { datasets.Validation, datasets.Test }.OfType<DatasetManifest>()];
        if (choice.Strategy == "feature-extractor")
        {
            return [.. all.Select(d => new FeatureNeed(d, choice.Cutoff!, "avg", ForHead: false))];
        }
        if (choice.Strategy == "fine-tune-top" && choice.Augment == "none")
        {
            // Stage 1 trains the new head on the pooled features; stage 2 the top on the cutoff's unpooled activations.
            string headTap = TrialPlan.HeadTapOf(ModelCatalog.Find(choice.Model));
            return
            [
                .. choice.HeadEpochs > 0 ? all.Select(d => new FeatureNeed(d, headTap, "avg", ForHead: true)) : [],
                .. all.Select(d => new FeatureNeed(d, choice.Cutoff!, "none", ForHead: false)),
            ];
        }
        return [];
    }

    /// <summary>
    /// The extraction that makes <paramref name="need"/>'s feature set: at the trial's input size and precision, stored
    /// in bf16 when computed in bf16 (the rounding has happened; fp32 storage would only double the size).
    /// </summary>
    /// <param name="layer">The tap's canonical step name (aliases resolved), which the key uses.</param>
    /// <param name="weights">What the trial names as its weights: a staged file's storage path, or builtin / random.</param>
    public static ExtractionRequest ExtractionFor(FeatureNeed need, TrialChoice choice, string layer, string weights, string weightsHash)
    {
        ArgumentNullException.ThrowIfNull(need);
        ArgumentNullException.ThrowIfNull(choice);
        ArchitectureInfo architecture = ModelCatalog.Find(choice.Model);
        return new ExtractionRequest(
            need.Dataset, choice.Model, layer, need.Pooling, architecture.Preprocessing.AtSize(choice.InputSize).Name, choice.Precision,
            weightsHash, weights is "builtin" or "random" ? null : weights, ShardSize: 1000, choice.BatchSize,
            InputSize: choice.InputSize == architecture.InputSize ? null : choice.InputSize,
            StorageDtype: choice.Precision == "bf16" ? "bf16" : "fp32");
    }

    public static PlannedTrial Plan(SweepSpec spec, TrialChoice choice, TrialDatasets datasets, string weights, string weightsHash, Guid trialId, int number,
        IReadOnlyDictionary<FeatureNeed, string>? featureSets = null)
    {
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(choice);
        ArgumentNullException.ThrowIfNull(datasets);
        string where = $"{spec.Source} line {spec.Dataset.Line}";
        IReadOnlyList<DatasetClass> classes = datasets.Train.Classes;
        if (datasets.Train.Entries.Count == 0)
        {
            throw new SpecException($"{where}: dataset.train '{spec.Dataset.Train.Text}' holds no images (expected one subfolder per class with image files)");
        }
        if (classes.Count < 2)
        {
            throw new SpecException($"{where}: dataset.train '{spec.Dataset.Train.Text}' has {classes.Count} class ({string.Join(", ", classes.Select(c => c.Name))}): a classifier needs at least 2");
        }
        var names = classes.Select(c => c.Name).ToHashSet(StringComparer.Ordinal);
        foreach ((string field, DatasetManifest? dataset, SpecPath? path) in new[] { ("dataset.validation", datasets.Validation, spec.Dataset.ValidationPath), ("dataset.test", datasets.Test, spec.Dataset.Test) })
        {
            if (dataset is null)
            {
                continue;
            }
            if (dataset.Entries.Count == 0)
            {
                throw new SpecException($"{where}: {field} '{path?.Text}' holds no images");
            }
            string? unknown = dataset.Classes.Select(c => c.Name).FirstOrDefault(c => !names.Contains(c));
            if (unknown is not null)
            {
                throw new SpecException($"{where}: {field} '{path?.Text}' has class '{unknown}', which dataset.train does not have (its classes: {string.Join(", ", names.Order())})");
            }
        }
        double fraction = spec.Dataset.ValidationFraction ?? 0;
        if (datasets.Validation is null)
        {
            var index = classes.ToDictionary(c => c.Name, c => c.Index, StringComparer.Ordinal);
            (_, int[] heldOut) = StratifiedSplit.Split([.. datasets.Train.Entries.Select(e => index[e.Label])], fraction, choice.Seed);
            if (heldOut.Length == 0)
            {
                throw new SpecException($"{where}: dataset.validation {fraction} of {datasets.Train.Entries.Count} training images is an empty validation split: use a larger fraction or a validation folder");
            }
        }
        TrialSettings settings = Settings(choice, weights, weightsHash);
        CheckTrainable(spec, settings, classes.Count);
        var cutoffFeatures = new Dictionary<string, string>(StringComparer.Ordinal);
        var headFeatures = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach ((FeatureNeed need, string key) in featureSets ?? new Dictionary<FeatureNeed, string>())
        {
            (need.ForHead ? headFeatures : cutoffFeatures)[need.Dataset.Id] = key;
        }
        var data = new TrialData
        {
            TrainDatasetId = datasets.Train.Id,
            ValidationDatasetId = datasets.Validation?.Id,
            ValidationFraction = fraction,
            SplitSeed = choice.Seed,
            TestDatasetId = datasets.Test?.Id,
            ClassNames = [.. classes.OrderBy(c => c.Index).Select(c => c.Name)],
            CutoffFeatures = cutoffFeatures,
            HeadFeatures = headFeatures,
        };
        return new PlannedTrial
        {
            TrialId = trialId,
            Number = number,
            Settings = settings,
            Data = data,
            SegmentEpochs = spec.SegmentEpochs,
            Params = JsonSerializer.Serialize(UsedParams(choice)),
            PrefixKey = cutoffFeatures.GetValueOrDefault(datasets.Train.Id),
        };
    }

    /// <summary>
    /// The spec fields a choice's strategy does not use (a grid over cutoffs also varies fine-tune-all's cutoff, which it
    /// ignores): two configurations that differ only in these are one trial. Mirrors what <see cref="TrialPlan.From"/>
    /// and the heads read: feature-extractor trains its head with the head's own optimizer (the mlp's epochs, rate and
    /// decay are the spec's; logistic, knn and sdca use none of them).
    /// </summary>
    public static IReadOnlyList<string> UnusedFields(TrialChoice choice)
    {
        ArgumentNullException.ThrowIfNull(choice);
        return choice.Strategy switch
        {
            "feature-extractor" => choice.Head == "mlp"
                ? ["backbone_lr_scale", "optimizer", "optimizer.momentum", "schedule", "head_epochs", "patience"]
                : ["lr", "epochs", "backbone_lr_scale", "optimizer", "optimizer.momentum", "optimizer.weight_decay", "schedule", "head_epochs", "patience"],
            "fine-tune-top" => ["head"],
            _ => ["cutoff", "head", "head_epochs"],
        };
    }

    /// <summary>The spec's fields with the choice's values, those the strategy uses only (DESIGN.md's results `params`).</summary>
    public static IReadOnlyDictionary<string, object> UsedParams(TrialChoice choice)
    {
        var unused = UnusedFields(choice).ToHashSet(StringComparer.Ordinal);
        return SweepSpec.Params(choice).Where(p => !unused.Contains(p.Key)).ToDictionary(StringComparer.Ordinal);
    }

    /// <summary>What makes two configurations the same trial: their values of the fields the strategy uses.</summary>
    public static string Identity(TrialChoice choice) =>
        JsonSerializer.Serialize(UsedParams(choice).OrderBy(p => p.Key, StringComparer.Ordinal).ToDictionary());

    /// <summary>The checks of a choice that need no data (strategy, precision, head), run before the datasets are scanned.</summary>
    public static void Check(SweepSpec spec, TrialChoice choice) => CheckTrainable(spec, Settings(choice, "random", "random:0"), classes: 2);

    private static TrialSettings Settings(TrialChoice choice, string weights, string weightsHash) => new()
    {
        Model = choice.Model, Weights = weights, WeightsHash = weightsHash, InputSize = choice.InputSize, Strategy = choice.Strategy,
        Cutoff = choice.Cutoff, Head = choice.Head, Lr = choice.Lr, BackboneLrScale = choice.BackboneLrScale, Optimizer = choice.Optimizer,
        Momentum = choice.Momentum, WeightDecay = choice.WeightDecay, Schedule = choice.Schedule, StepEpochs = choice.StepEpochs,
        StepGamma = choice.StepGamma, Epochs = choice.Epochs, HeadEpochs = choice.HeadEpochs, BatchSize = choice.BatchSize,
        Augment = choice.Augment, Precision = choice.Precision, Seed = choice.Seed, Patience = choice.Patience,
    };

    /// <summary>What the worker would refuse, refused here first, with the spec's line: the trainer's own parser is the check.</summary>
    private static void CheckTrainable(SweepSpec spec, TrialSettings settings, int classes)
    {
        try
        {
            TrialPlan.From(settings, classes);
        }
        catch (Exception e) when (e is ArgumentException or UnknownNameException)
        {
            int line = settings.Precision != "fp32" ? spec.Precision.Line : spec.Strategy.Line;
            throw new SpecException($"{spec.Source} line {line}: {e.Message}", e);
        }
        if (settings.Strategy == "feature-extractor" && settings.Head == "lightgbm")
        {
            throw new SpecException($"{spec.Source} line {spec.Head.Line}: head 'lightgbm' is not built yet; use one of: logistic, mlp, knn, sdca");
        }
    }
}
