namespace Cluster.Storage.Database.Entities;

// One record type per table of the data model (DESIGN.md). Times are UTC DateTime: both PostgreSQL
// (timestamptz) and SQLite (ISO text, which sorts and compares correctly) handle them in queries.

public enum FeatureSetStatus
{
    Pending,
    Extracting,
    Complete,
    Failed,
}

public enum SweepStatus
{
    Planned,
    Running,
    Completed,
    Cancelled,
    Failed,
}

public enum TrialStatus
{
    Pending,
    WaitingForFeatures,
    Running,
    Completed,
    Stopped,
    Failed,
}

public enum SegmentStatus
{
    Sent,
    Running,
    Completed,
    Failed,
}

public enum WorkerStatus
{
    Alive,
    Stopped,
    Lost,
}

public sealed class DatasetRecord
{
    public required string Id { get; set; }
    public required string Root { get; set; }
    public required string ManifestPath { get; set; }
    public required string ContentHash { get; set; }
    public int ImageCount { get; set; }
    public int ClassCount { get; set; }
    public DateTime CreatedAt { get; set; }
}

public sealed class FeatureSetRecord
{
    /// <summary>The frozen-prefix key: hash of weights, tap layer, pooling, preprocessing, precision and dataset version.</summary>
    public required string Key { get; set; }
    public required string Model { get; set; }
    public required string WeightsHash { get; set; }
    public required string Layer { get; set; }
    public required string Pooling { get; set; }
    public required string Preprocessing { get; set; }
    public required string DatasetId { get; set; }
    public required string Dtype { get; set; }

    /// <summary>Shape of one row's features, e.g. "512" or "512x7x7".</summary>
    public required string Shape { get; set; }
    public FeatureSetStatus Status { get; set; }
    public int ShardCount { get; set; }

    /// <summary>Images per shard (the last may hold fewer); fixed when the set is first requested.</summary>
    public int ShardSize { get; set; }

    /// <summary>Images in the dataset, and of those, how many were extracted (the rest were skipped).</summary>
    public int ImageCount { get; set; }
    public int ExtractedCount { get; set; }
    public DateTime CreatedAt { get; set; }
    public DateTime? CompletedAt { get; set; }

    /// <summary>The request it was planned from (an EnsureFeatureSet as JSON): what the coordinator service completes it
    /// with, and sends its missing shards from again after a restart; null for sets planned before the service did this.</summary>
    public string? Request { get; set; }

    /// <summary>When a sweep or an extraction last asked for the set: under a storage budget, the sets no sweep needs
    /// are evicted least recently used first. Null for sets asked for before this was recorded (evicted first).</summary>
    public DateTime? LastUsedAt { get; set; }
}

public enum FeatureShardStatus
{
    Complete,
    Failed,
}

/// <summary>
/// One shard of a feature set, as recorded by the worker that extracted it: Complete with its file and hash,
/// or Failed with the reason (a later successful attempt replaces the row).
/// </summary>
public sealed class FeatureShardRecord
{
    public required string FeatureSetKey { get; set; }
    public int Index { get; set; }
    public FeatureShardStatus Status { get; set; }
    public string? FailureReason { get; set; }
    public double Seconds { get; set; }
    public long RowStart { get; set; }
    public int RowCount { get; set; }
    public required string Path { get; set; }
    public required string Sha256 { get; set; }
    public int ImageCount { get; set; }
    public int SkippedCount { get; set; }
    public string? WorkerId { get; set; }
    public DateTime CreatedAt { get; set; }
}

public sealed class SkippedImageRecord
{
    public long Id { get; set; }
    public required string DatasetId { get; set; }
    public required string Path { get; set; }
    public required string Reason { get; set; }
    public DateTime RecordedAt { get; set; }
}

public sealed class SweepRecord
{
    public Guid Id { get; set; }
    public required string Name { get; set; }
    public required string SpecText { get; set; }
    public required string SpecHash { get; set; }
    public SweepStatus Status { get; set; }
    public DateTime CreatedAt { get; set; }
    public DateTime? StartedAt { get; set; }
    public DateTime? CompletedAt { get; set; }

    /// <summary>The search method and its settings (a SweepSearch as JSON), and its state after the last event it handled.</summary>
    public string? Search { get; set; }
    public string? SearchState { get; set; }

    /// <summary>Failed attempts after which a trial is failed.</summary>
    public int MaxAttempts { get; set; } = 3;

    /// <summary>The wall-time budget's end: past it nothing more is dispatched.</summary>
    public DateTime? Deadline { get; set; }

    /// <summary>Why the sweep stopped before its search completed (cancelled, the wall-time budget), or null.</summary>
    public string? StopReason { get; set; }
}

public sealed class TrialRecord
{
    public Guid Id { get; set; }
    public Guid SweepId { get; set; }

    /// <summary>Hyperparameters as a JSON object (jsonb in PostgreSQL).</summary>
    public required string Hyperparameters { get; set; }
    public required string Strategy { get; set; }
    public string? PrefixKey { get; set; }
    public TrialStatus Status { get; set; }
    public int Rung { get; set; }
    public double? BestMetric { get; set; }
    public int Attempts { get; set; }
    public string? FailureReason { get; set; }

    /// <summary>The trial's place in its sweep (0, 1, ...): the order trials are listed and named in.</summary>
    public int Number { get; set; }

    /// <summary>What every segment of the trial is sent with: its settings and data (a TrialSettings and a TrialData, as JSON).</summary>
    public string? Plan { get; set; }

    /// <summary>Epochs the trial trains in all, and epochs per segment.</summary>
    public int Epochs { get; set; }
    public int SegmentEpochs { get; set; }

    /// <summary>The last epoch trained and recorded (0-based), or null before the first segment completes.</summary>
    public int? Epoch { get; set; }
    public double? ValidationAccuracy { get; set; }
    public double? ValidationLoss { get; set; }
    public double? TestAccuracy { get; set; }

    /// <summary>The segment whose checkpoint is the best so far (the one a finished trial keeps), and its path.</summary>
    public int? BestSegment { get; set; }
    public string? Checkpoint { get; set; }

    /// <summary>Training time summed over completed segments.</summary>
    public double Seconds { get; set; }

    /// <summary>Where the running segment is (a TrialProgress as JSON), for progress bars; null when none runs.</summary>
    public string? Progress { get; set; }

    /// <summary>The epochs the search last asked the trial to reach (an ASHA rung, or all of them); 0 before it is started.</summary>
    public int TargetEpochs { get; set; }

    /// <summary>Segments completed and recorded; the next segment sent has this index.</summary>
    public int CompletedSegments { get; set; }

    /// <summary>The segment sent and not yet reported, or null when none is in flight.</summary>
    public int? DispatchedSegment { get; set; }
    public DateTime? DispatchedAt { get; set; }

    /// <summary>Early stopping ended the trial's training before its epochs.</summary>
    public bool StoppedEarly { get; set; }

    /// <summary>The worker that trained its last segment.</summary>
    public string? WorkerId { get; set; }
    public DateTime CreatedAt { get; set; }
    public DateTime? StartedAt { get; set; }
    public DateTime? CompletedAt { get; set; }
}

public sealed class SegmentRecord
{
    public Guid TrialId { get; set; }
    public int Index { get; set; }
    public int EpochFrom { get; set; }
    public int EpochTo { get; set; }
    public string? CheckpointPath { get; set; }
    public string? Sha256 { get; set; }
    public string? WorkerId { get; set; }
    public SegmentStatus Status { get; set; }
    public int Attempts { get; set; }

    /// <summary>The last epoch the segment trained (it may end early), and the validation accuracy then.</summary>
    public int? LastEpoch { get; set; }
    public double? ValidationAccuracy { get; set; }
    public double? TestAccuracy { get; set; }
    public bool StoppedEarly { get; set; }
    public double Seconds { get; set; }
    public string? FailureReason { get; set; }

    /// <summary>When the worker began the segment's work (after its "already recorded?" check): with the trial's dispatch
    /// time, what the segment waited for; with <see cref="CompletedAt"/>, what recording it took.</summary>
    public DateTime? StartedAt { get; set; }
    public DateTime? CompletedAt { get; set; }
}

public sealed class EpochMetricRecord
{
    public long Id { get; set; }
    public Guid TrialId { get; set; }
    public int Epoch { get; set; }

    /// <summary>"train", "validation" or "test" (the test set is scored once, at the trial's last epoch).</summary>
    public required string Split { get; set; }
    public double Loss { get; set; }
    public double Accuracy { get; set; }
    public double ImagesPerSecond { get; set; }
    public double Seconds { get; set; }

    /// <summary>The new head's learning rate during the epoch (train rows only).</summary>
    public double? LearningRate { get; set; }
}

public sealed class WorkerRecord
{
    public required string Id { get; set; }
    public required string Host { get; set; }
    public required string Device { get; set; }
    public required string Version { get; set; }
    public WorkerStatus Status { get; set; }
    public DateTime StartedAt { get; set; }
    public DateTime LastHeartbeat { get; set; }
    public string? CurrentJob { get; set; }

    /// <summary>What the current job waits for at the last heartbeat (see WorkerHeartbeat.Waiting).</summary>
    public string? Waiting { get; set; }
    public double? ImagesPerSecond { get; set; }

    /// <summary>Resident memory of the worker process at its last heartbeat, in bytes.</summary>
    public long? ResidentBytes { get; set; }

    /// <summary>The worker's kernel check at its last heartbeat (see WorkerHeartbeat.KernelCheck).</summary>
    public string? KernelCheck { get; set; }
}

/// <summary>The recorded outcome of a self-test job (`coordinator selftest`), written by the worker that ran it.</summary>
public sealed class SelfTestRunRecord
{
    public Guid JobId { get; set; }
    public required string WorkerId { get; set; }
    public required string Device { get; set; }
    public required string TorchVersion { get; set; }
    public required string OutputShape { get; set; }
    public double Checksum { get; set; }
    public double Milliseconds { get; set; }
    public DateTime CompletedAt { get; set; }

    /// <summary>The worker's kernel check when it ran the self-test: configurations checked, CPU, reroutes.</summary>
    public string? KernelCheck { get; set; }
}
