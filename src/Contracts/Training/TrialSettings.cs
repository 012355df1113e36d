namespace Cluster.Contracts.Training;

/// <summary>
/// One trial's hyperparameters, every field with one value (a sweep spec's fields after the search method chose them).
/// The names are the sweep spec's (DESIGN.md); the coordinator has checked every value before a segment is sent.
/// </summary>
public sealed record TrialSettings
{
    /// <summary>An architecture name from the model catalog (`coordinator models list`).</summary>
    public required string Model { get; init; }

    /// <summary>"builtin", "random", or a weights file relative to the storage root (staged there by the coordinator).</summary>
    public required string Weights { get; init; }

    /// <summary>Identifies the weights: "builtin:NAME", "random:SEED" or "sha256:HEX" (part of the frozen-prefix key).</summary>
    public required string WeightsHash { get; init; }

    /// <summary>Side of the square input in pixels; the model's native size unless the spec says otherwise.</summary>
    public required int InputSize { get; init; }

    /// <summary>feature-extractor | fine-tune-top | fine-tune-all | from-scratch.</summary>
    public required string Strategy { get; init; }

    /// <summary>The last frozen layer (fine-tune-top), or the tap the features are taken at (feature-extractor); a step name.</summary>
    public string? Cutoff { get; init; }

    /// <summary>feature-extractor's classifier: logistic | mlp | knn | sdca.</summary>
    public string? Head { get; init; }

    /// <summary>The learning rate of the new head (and of every trained layer unless <see cref="BackboneLrScale"/> is set).</summary>
    public required double Lr { get; init; }

    /// <summary>fine-tune-all and fine-tune-top: the backbone's layers step at Lr × this; null: at Lr.</summary>
    public double? BackboneLrScale { get; init; }

    /// <summary>sgd | adam | adamw.</summary>
    public required string Optimizer { get; init; }

    public double Momentum { get; init; } = 0.9;

    public double WeightDecay { get; init; }

    /// <summary>constant | step | cosine (per epoch).</summary>
    public string Schedule { get; init; } = "constant";

    /// <summary>step: the rate is multiplied by <see cref="StepGamma"/> every this many epochs.</summary>
    public int StepEpochs { get; init; } = 10;

    public double StepGamma { get; init; } = 0.1;

    /// <summary>Epochs of the trial in total (the segments split them).</summary>
    public required int Epochs { get; init; }

    /// <summary>fine-tune-top's stage 1: epochs training the new head alone (on cached features) before the top is unfrozen.</summary>
    public int HeadEpochs { get; init; } = 3;

    public required int BatchSize { get; init; }

    /// <summary>none | flip | crop-flip.</summary>
    public string Augment { get; init; } = "none";

    /// <summary>fp32 | bf16 (autocast of the forward pass).</summary>
    public string Precision { get; init; } = "fp32";

    public long Seed { get; init; }

    /// <summary>Stop after this many epochs without a better validation metric; null: never stop early.</summary>
    public int? Patience { get; init; }
}
