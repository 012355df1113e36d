namespace Cluster.Contracts.Workers;

/// <summary>Worker → coordinator, every few seconds: the worker is alive, and what it is doing.</summary>
public sealed record WorkerHeartbeat
{
    public required string WorkerId { get; init; }
    public required string Host { get; init; }
    public required string Device { get; init; }
    public required string Version { get; init; }
    public required DateTime SentAt { get; init; }

    /// <summary>The id of the job in progress, or null when idle.</summary>
    public string? CurrentJob { get; init; }

    /// <summary>What the current job waits for outside itself (a full or read-only shared volume) and since when; null
    /// while it works. A worker whose job is held this way is alive, not lost, and not failing its work.</summary>
    public string? Waiting { get; init; }

    /// <summary>Images per second over the last interval, when the current job processes images.</summary>
    public double? ImagesPerSecond { get; init; }

    /// <summary>The worker process's resident memory (bytes), so a worker whose memory creeps up is visible from the coordinator.</summary>
    public long? ResidentBytes { get; init; }

    /// <summary>
    /// The worker's kernel check so far, in one line: how many convolution configurations it checked on which CPU and
    /// libtorch, and how many it computes another way because libtorch's kernel was wrong or crashed there.
    /// </summary>
    public string? KernelCheck { get; init; }

    /// <summary>The feature sets the worker holds in memory (most recently used first): the trials of those frozen
    /// prefixes train there without reading their sets again.</summary>
    public IReadOnlyList<string> ResidentFeatureSets { get; init; } = [];

    /// <summary>Bytes of those sets.</summary>
    public long ResidentFeatureBytes { get; init; }

    /// <summary>The worker's own queue (<see cref="QueueNames.WorkerQueue"/>), where the coordinator sends it the segments
    /// of the prefixes it holds; null where it has none (embedded, over the in-memory transport).</summary>
    public string? DirectQueue { get; init; }
}
