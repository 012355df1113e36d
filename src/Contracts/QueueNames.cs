namespace Cluster.Contracts;

/// <summary>
/// Names of the durable command queues. Commands are sent to a queue (point to point); events are published.
/// </summary>
public static class QueueNames
{
    /// <summary>The queue every GPU worker consumes its jobs from, one job at a time per worker.</summary>
    public const string GpuWork = "gpu-work";

    /// <summary>
    /// Where a job nobody could finish ends: one MassTransit moved there after its retries, or one the broker dead-lettered
    /// after <see cref="GpuWork"/>'s delivery limit (every worker that took it died). An exchange and a queue of this name,
    /// MassTransit's own naming of an endpoint's error queue; `coordinator errors` lists and requeues what it holds.
    /// </summary>
    public const string GpuWorkError = GpuWork + "_error";

    /// <summary>The coordinator service's copy of every dead job (bound to <see cref="GpuWorkError"/>'s exchange): it fails
    /// the job's trial or shard with the reason, so that nothing waits on a job that will not come back.</summary>
    public const string DeadJobs = "coordinator.dead-jobs";

    /// <summary>The coordinator service's queue for worker events (heartbeats, job outcomes).</summary>
    public const string Coordinator = "coordinator";

    /// <summary>How long a directed segment waits in its worker's queue (the queue's message TTL) before any worker may take it.</summary>
    public static readonly TimeSpan DirectedWait = TimeSpan.FromSeconds(10);

    /// <summary>
    /// The queue of one worker's directed segments: the trials whose frozen features it already holds in memory. A
    /// message its worker does not take within <see cref="DirectedWait"/> (stopped or dead) moves on to
    /// <see cref="GpuWork"/>; a busy worker passes it on at once.
    /// </summary>
    public static string WorkerQueue(string workerId)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(workerId);
        // Queue names allow more, but these characters read the same in every tool (rabbitmqctl, the management UI, URIs).
        var name = new System.Text.StringBuilder(GpuWork.Length + 1 + workerId.Length).Append(GpuWork).Append('.');
        foreach (char c in workerId)
        {
            name.Append(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '_');
        }
        return name.ToString();
    }
}
