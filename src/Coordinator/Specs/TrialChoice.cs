namespace Cluster.Coordinator.Specs;

/// <summary>
/// One trial's hyperparameters, one value each, as a search method (or a one-trial spec) chose them; the spec's
/// defaults and the model's own (native input size, default tap) are filled in. <see cref="SweepSpec.Params"/> names
/// them by the spec's fields.
/// </summary>
public sealed record TrialChoice
{
    public required string Model { get; init; }

    public required SpecWeights Weights { get; init; }

    /// <summary>Side of the square input in pixels (the model's native size unless the spec set one).</summary>
    public required int InputSize { get; init; }

    public required string Strategy { get; init; }

    /// <summary>The last frozen layer (fine-tune-top) or the features' tap (feature-extractor); null for the strategies that train every layer.</summary>
    public string? Cutoff { get; init; }

    public required string Head { get; init; }

    public required double Lr { get; init; }

    public double? BackboneLrScale { get; init; }

    public required string Optimizer { get; init; }

    public required double Momentum { get; init; }

    public required double WeightDecay { get; init; }

    public required string Schedule { get; init; }

    public required int StepEpochs { get; init; }

    public required double StepGamma { get; init; }

    public required int Epochs { get; init; }

    public required int BatchSize { get; init; }

    public required string Augment { get; init; }

    public required string Precision { get; init; }

    public required long Seed { get; init; }

    public int? Patience { get; init; }

    public required int HeadEpochs { get; init; }
}
