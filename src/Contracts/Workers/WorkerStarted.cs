namespace Cluster.Contracts.Workers;

/// <summary>Worker → coordinator: a worker process came up and is ready to take jobs.</summary>
public sealed record WorkerStarted
{
    public required string WorkerId { get; init; }
    public required string Host { get; init; }
    public required string Device { get; init; }
    public required string Version { get; init; }
    public required DateTime StartedAt { get; init; }
}
