namespace Cluster.Contracts.Training;

/// <summary>
/// Coordinator → a GPU worker: train one trial for epochs [<see cref="EpochFrom"/>, <see cref="EpochTo"/>), starting
/// from the trial's last good checkpoint (or its initial weights for the first segment), then write a checkpoint and
/// the epochs' metrics. (TrialId, Segment) identifies the work: a segment already recorded is not trained again.
/// Segments are bounded (a few minutes) so no delivery stays unacknowledged past RabbitMQ's consumer timeout.
/// </summary>
public sealed record TrainSegment : IVersionedJob
{
    /// <summary>The <see cref="ContractVersion"/> the sender wrote (a worker refuses one it does not read).</summary>
    public int Version { get; init; } = ContractVersion.Current;

    public required Guid SweepId { get; init; }

    public required Guid TrialId { get; init; }

    public required int Segment { get; init; }

    public required int EpochFrom { get; init; }

    public required int EpochTo { get; init; }

    /// <summary>True for the trial's last segment: the test set is scored after it.</summary>
    public required bool IsLast { get; init; }

    public required TrialSettings Settings { get; init; }

    public required TrialData Data { get; init; }

    /// <summary>
    /// The coordinator may have sent this segment before (a retry after a failure, or a restart that sends again what was
    /// in flight): the worker checks whether it is already recorded before training. A first send, delivered for the
    /// first time, skips that lookup (one database round trip less on every dispatch).
    /// </summary>
    public bool Resent { get; init; }

    /// <summary>The job's name while a worker runs it (its heartbeats' current job), which the coordinator matches
    /// against the segment's outcome (a method, so it is not serialized with the record).</summary>
    public string JobId() => $"train/{TrialId}/{Segment}";
}

/// <summary>Worker → coordinator: a segment is trained, checkpointed and recorded (also sent again for a segment found already done).</summary>
public sealed record SegmentCompleted
{
    public required Guid SweepId { get; init; }

    public required Guid TrialId { get; init; }

    public required int Segment { get; init; }

    public required string WorkerId { get; init; }

    /// <summary>The last epoch trained (0-based).</summary>
    public required int Epoch { get; init; }

    public double? ValidationAccuracy { get; init; }

    public double? ValidationLoss { get; init; }

    /// <summary>Set after the last segment when the trial has a test set.</summary>
    public double? TestAccuracy { get; init; }

    /// <summary>Early stopping: the validation metric stopped improving, so the trial ends after this segment.</summary>
    public bool StoppedEarly { get; init; }

    /// <summary>The checkpoint written, relative to the storage root.</summary>
    public required string Checkpoint { get; init; }

    public required double Seconds { get; init; }
}

/// <summary>Worker → coordinator: a segment cannot be trained (bad data, missing checkpoint, no verified kernel), with the one-line reason.</summary>
public sealed record SegmentFailed
{
    public required Guid SweepId { get; init; }

    public required Guid TrialId { get; init; }

    public required int Segment { get; init; }

    public required string WorkerId { get; init; }

    public required string Reason { get; init; }

    /// <summary>The failure may not recur elsewhere (an I/O error, memory): the coordinator retries up to the sweep's attempts.</summary>
    public bool Retriable { get; init; }
}

/// <summary>Worker → coordinator, at most about once a second while a segment trains: where it is (the CLI's progress bar).</summary>
public sealed record TrialProgress
{
    public required Guid TrialId { get; init; }

    public required int Segment { get; init; }

    public required int Epoch { get; init; }

    public required int Epochs { get; init; }

    public required int Batch { get; init; }

    public required int Batches { get; init; }

    /// <summary>"head" (fine-tune-top's stage 1), "train", "validation" or "test".</summary>
    public required string Phase { get; init; }

    public double Loss { get; init; }

    public double ImagesPerSecond { get; init; }
}
