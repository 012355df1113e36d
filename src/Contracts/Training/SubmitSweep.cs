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

    public required IReadOnlyList<PlannedTrial> Trials { get; init; }
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
