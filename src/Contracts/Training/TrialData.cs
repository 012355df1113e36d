namespace Cluster.Contracts.Training;

/// <summary>
/// Where a trial's images (or their cached features) are: datasets by id (manifests under datasets/&lt;id&gt;/ of the
/// storage root), and the feature sets the coordinator made sure of for the strategies that train on cached activations.
/// </summary>
public sealed record TrialData
{
    public required string TrainDatasetId { get; init; }

    /// <summary>A separate validation dataset; null when the validation split is a fraction of train.</summary>
    public string? ValidationDatasetId { get; init; }

    /// <summary>The stratified, seeded fraction of train held out for validation when there is no validation dataset.</summary>
    public double ValidationFraction { get; init; }

    /// <summary>Seeds the validation split (the same seed always holds out the same images).</summary>
    public long SplitSeed { get; init; }

    /// <summary>Optional test dataset, scored once when the trial ends.</summary>
    public string? TestDatasetId { get; init; }

    /// <summary>The class names, in label order (stored with the model).</summary>
    public required IReadOnlyList<string> ClassNames { get; init; }

    /// <summary>Cached activations at the cutoff (feature-extractor: pooled; fine-tune-top: unpooled), by dataset id; empty when the trial trains from images.</summary>
    public IReadOnlyDictionary<string, string> CutoffFeatures { get; init; } = new Dictionary<string, string>();

    /// <summary>fine-tune-top's stage 1: cached activations at the global pool (the new head's input), by dataset id.</summary>
    public IReadOnlyDictionary<string, string> HeadFeatures { get; init; } = new Dictionary<string, string>();

    /// <summary>Every feature set the trial trains on, each once (a method, so it is not serialized with the record).</summary>
    public IReadOnlyList<string> FeatureSetKeys() => [.. CutoffFeatures.Values.Concat(HeadFeatures.Values).Distinct(StringComparer.Ordinal)];
}
