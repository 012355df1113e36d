namespace Cluster.Contracts.Training;

/// <summary>
/// CLI → the coordinator service: record a sweep and its trials and start them. The service is the only writer of sweep
/// and trial state; the CLI then watches the database. A sweep already recorded (same id) is not started twice.
/// </summary>
public sealed record SubmitSweep
{
    public required Guid SweepId { get; init; }

    public required string Name { get; init; }

    /// <summary>The spec as the user wrote it, and its SHA-256.</summary>
    public required string SpecText { get; init; }

    public required string SpecHash { get; init; }

    /// <summary>Every configuration the search may train, numbered from 0: trial n trains configuration n.</summary>
    public required IReadOnlyList<PlannedTrial> Trials { get; init; }

    /// <summary>How the service chooses, promotes and stops trials; null: every trial trains its full epochs at once.</summary>
    public SweepSearch? Search { get; init; }

    /// <summary>A trial whose segments fail this many times (a lost worker, a retriable error) is failed, and the sweep goes on.</summary>
    public int MaxAttempts { get; init; } = 3;

    /// <summary>The sweep's wall-time budget: past it nothing more is dispatched and the sweep ends once in-flight segments report.</summary>
    public double? WallTimeSeconds { get; init; }
}

/// <summary>A sweep's search method and its settings, as the coordinator service rebuilds it (also after a restart).</summary>
public sealed record SweepSearch
{
    /// <summary>grid | random | asha (grid and random train a fixed list of configurations).</summary>
    public required string Method { get; init; }

    /// <summary>The most trials training at once.</summary>
    public required int Parallelism { get; init; }

    /// <summary>val_accuracy | val_loss: the validation metric reported to the method.</summary>
    public string Metric { get; init; } = "val_accuracy";

    /// <summary>max | min.</summary>
    public string Mode { get; init; } = "max";

    /// <summary>asha: the first rung's epochs, the top rung's epochs, and the reduction factor.</summary>
    public int MinEpochs { get; init; } = 1;

    public int MaxEpochs { get; init; }

    public double Reduction { get; init; } = 3;
}

/// <summary>One trial of a submitted sweep: its settings and data, how its epochs split into segments, and its spec values.</summary>
public sealed record PlannedTrial
{
    public required Guid TrialId { get; init; }

    public required int Number { get; init; }

    public required TrialSettings Settings { get; init; }

    public required TrialData Data { get; init; }

    /// <summary>Epochs per segment (feature-extractor trials are one segment whatever this says).</summary>
    public required int SegmentEpochs { get; init; }

    /// <summary>The spec's field names with this trial's values, as a JSON object (DESIGN.md's results `params`).</summary>
    public required string Params { get; init; }

    /// <summary>The frozen-prefix key of the feature set it trains on, if any.</summary>
    public string? PrefixKey { get; init; }
}
