namespace Cluster.Contracts;

/// <summary>
/// Names of the durable command queues. Commands are sent to a queue (point to point); events are published.
/// </summary>
public static class QueueNames
{
    /// <summary>The queue every GPU worker consumes its jobs from, one job at a time per worker.</summary>
    public const string GpuWork = "gpu-work";

    /// <summary>The coordinator service's queue for worker events (heartbeats, job outcomes).</summary>
    public const string Coordinator = "coordinator";
}
