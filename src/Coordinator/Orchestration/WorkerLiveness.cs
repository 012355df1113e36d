using Cluster.Storage.Database.Entities;

namespace Cluster.Coordinator.Orchestration;

/// <summary>
/// What `coordinator workers` calls a worker: stopped (it said so), lost (silent longer than the bound) or alive.
/// "Lost" is derived from silence rather than stored: it needs no timer, and it heals by itself when the worker's
/// next heartbeat arrives.
/// </summary>
public static class WorkerLiveness
{
    public const string Alive = "alive";
    public const string Lost = "lost";
    public const string Stopped = "stopped";

    public static string Of(WorkerRecord worker, DateTime now, TimeSpan lostAfter) =>
        worker.Status == WorkerStatus.Stopped ? Stopped
        : now - worker.LastHeartbeat > lostAfter ? Lost
        : Alive;
}
