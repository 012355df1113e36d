using System.Globalization;
using Cluster.Coordinator.Specs;
using Cluster.GpuWorker.Models;

namespace Cluster.Coordinator.Planning;

/// <summary>The cell of DESIGN.md's decision table that `strategy: auto` landed in, and what it maps to here.</summary>
/// <param name="Cell">"small/similar", "small/different", "big/similar" or "big/different".</param>
/// <param name="Cutoff">The feature-extractor's tap; null for the strategies that train every layer.</param>
public sealed record AutoPick(bool Big, bool Similar, string Cell, string Strategy, string? Cutoff);

/// <summary>
/// `strategy: auto` as one trial configuration resolved it: the data's size and similarity, the thresholds, the cell and
/// the pick, with how the similarity was obtained (`sweep plan` prints it, `sweep run` logs it).
/// </summary>
/// <param name="InputSize">The size the similarity was measured at: the model's native one.</param>
/// <param name="TrainImages">Training images after the validation split (what a trial trains on).</param>
/// <param name="Measurement">How the similarity was measured; null when the spec gave it (`auto.similarity`).</param>
/// <param name="Cached">The measured score was read from the storage's cache, not measured again.</param>
public sealed record AutoDecision(
    string Model, string Weights, int InputSize, int TrainImages, int Classes, double ImagesPerClass, double Similarity,
    SimilarityMeasurement? Measurement, bool Cached, double SimilarAbove, int BigFrom, AutoPick Pick)
{
    /// <summary>One line: the inputs, the thresholds and the cell, then the pick.</summary>
    public string Reason
    {
        get
        {
            CultureInfo c = CultureInfo.InvariantCulture;
            string size = string.Format(c, "{0:N0} training images in {1} classes = {2:N0} per class ({3} {4:N0}: {5})", TrainImages, Classes,
                ImagesPerClass, Pick.Big ? "at least" : "below", BigFrom, Pick.Big ? "big" : "small");
            string how = Measurement is { } m
                ? string.Format(c, "batch-norm statistics of {0} on {1} sampled images at {2}px, {3} batch norms, divergence {4:F3}{5}",
                    Model, m.Images, InputSize, m.Layers, m.Divergence, Cached ? ", cached" : "")
                : "given by auto.similarity";
            string similar = string.Format(c, "similarity {0:F3} ({1}; {2} {3:F2}: {4})", Similarity, how, Pick.Similar ? "above" : "not above",
                SimilarAbove, Pick.Similar ? "similar" : "different");
            string choice = Pick.Cutoff is null ? Pick.Strategy : $"{Pick.Strategy} at {Pick.Cutoff}";
            return $"auto: {size}; {similar} -> {Pick.Cell} -> {choice}";
        }
    }
}

/// <summary>What the similarity measurement reported, as the decision shows it.</summary>
public sealed record SimilarityMeasurement(double Score, double Divergence, int Images, int Layers);

/// <summary>
/// DESIGN.md's decision table as a pure function of the data's size and its similarity to the pretraining domain
/// (docs/architecture.md, "Strategy auto", says why each cell maps as it does):
/// small/similar → feature-extractor at the global pool (all layers); small/different → feature-extractor at an early
/// tap (the first layers, <see cref="EarlyTap"/>); big/similar → fine-tune-all (enough data to adapt every layer
/// without overfitting, and no cutoff to choose per family); big/different → from-scratch.
/// </summary>
public static class AutoStrategy
{
    /// <summary>The "first layers" of each family: the end of the first half of its stages.</summary>
    private static readonly Dictionary<string, string> s_earlyTaps = new(StringComparer.Ordinal)
    {
        ["resnet"] = "layer2",     // 2 of 4 residual stages
        ["vgg"] = "block3_pool",   // 3 of 5 conv blocks (Keras' names)
        ["alexnet"] = "pool2",     // 2 of 3 pooled conv groups
    };

    /// <param name="imagesPerClass">Training images per class; big from <see cref="AutoSpec.BigFrom"/> on.</param>
    /// <param name="similarity">The similarity score; similar when above <see cref="AutoSpec.SimilarAbove"/>.</param>
    public static AutoPick Decide(double imagesPerClass, double similarity, AutoSpec thresholds, ArchitectureInfo architecture)
    {
        ArgumentNullException.ThrowIfNull(thresholds);
        ArgumentNullException.ThrowIfNull(architecture);
        bool big = imagesPerClass >= thresholds.BigFrom;
        bool similar = similarity > thresholds.SimilarAbove;
        string cell = $"{(big ? "big" : "small")}/{(similar ? "similar" : "different")}";
        return (big, similar) switch
        {
            (false, true) => new AutoPick(big, similar, cell, SpecNames.FeatureExtractor, "avgpool"),
            (false, false) => new AutoPick(big, similar, cell, SpecNames.FeatureExtractor, EarlyTap(architecture)),
            (true, true) => new AutoPick(big, similar, cell, SpecNames.FineTuneAll, null),
            (true, false) => new AutoPick(big, similar, cell, SpecNames.FromScratch, null),
        };
    }

    /// <summary>
    /// The tap that ends "the first layers": the middle stage boundary for ResNets, VGG and AlexNet; for the other
    /// families (Inception, MobileNets), whose stages are not named alike, the step halfway to the head's input.
    /// </summary>
    public static string EarlyTap(ArchitectureInfo architecture)
    {
        ArgumentNullException.ThrowIfNull(architecture);
        if (s_earlyTaps.TryGetValue(architecture.Family, out string? tap))
        {
            return tap;
        }
        using Backbone built = architecture.Build(new BackboneOptions(IncludeTop: false));
        int head = built.ResolveTap(architecture.DefaultTap);
        return built.Steps[head / 2].Name;
    }

    /// <summary>Training images per class: those a trial trains on (train less its validation fraction) over the classes.</summary>
    public static (int TrainImages, int Classes, double PerClass) Size(SweepSpec spec, TrialDatasets datasets)
    {
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(datasets);
        double validation = datasets.Validation is null ? spec.Dataset.ValidationFraction ?? 0 : 0;
        int train = (int)Math.Round(datasets.Train.Entries.Count * (1 - validation));
        int classes = Math.Max(1, datasets.Train.Classes.Count);
        return (train, classes, (double)train / classes);
    }
}
