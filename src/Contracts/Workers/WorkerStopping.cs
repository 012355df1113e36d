namespace Cluster.Contracts.Workers;

/// <summary>Worker → coordinator: the worker stopped taking work (shutdown); an unfinished job will be redelivered.</summary>
public sealed record WorkerStopping
{
    public required string WorkerId { get; init; }
    public required DateTime StoppedAt { get; init; }

    /// <summary>The job that was interrupted and left for redelivery, if any.</summary>
    public string? InterruptedJob { get; init; }
}
