using Cluster.Contracts.Workers;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using MassTransit;
using Microsoft.EntityFrameworkCore;

namespace Cluster.Coordinator.Orchestration;

/// <summary>
/// Keeps the `workers` table from what workers report about themselves. Workers state facts; the coordinator
/// records them. Events older than what is recorded (redelivered or reordered) change nothing.
/// </summary>
public sealed class WorkerRegistryConsumer(IDbContextFactory<ClusterDbContext> databases, SegmentPlacement? placement = null) :
    IConsumer<WorkerStarted>, IConsumer<WorkerHeartbeat>, IConsumer<WorkerStopping>
{
    public async Task Consume(ConsumeContext<WorkerStarted> context)
    {
        WorkerStarted m = context.Message;
        await using ClusterDbContext db = await databases.CreateDbContextAsync(context.CancellationToken);
        WorkerRecord? worker = await db.Workers.FindAsync([m.WorkerId], context.CancellationToken);
        if (worker is null)
        {
            worker = new WorkerRecord { Id = m.WorkerId, Host = m.Host, Device = m.Device, Version = m.Version };
            db.Workers.Add(worker);
        }
        else if (m.StartedAt < worker.StartedAt)
        {
            return;
        }
        worker.Host = m.Host;
        worker.Device = m.Device;
        worker.Version = m.Version;
        worker.Status = WorkerStatus.Alive;
        worker.StartedAt = m.StartedAt;
        worker.LastHeartbeat = Max(worker.LastHeartbeat, m.StartedAt);
        worker.CurrentJob = null;
        worker.Waiting = null;
        await db.SaveChangesAsync(context.CancellationToken);
    }

    public async Task Consume(ConsumeContext<WorkerHeartbeat> context)
    {
        WorkerHeartbeat m = context.Message;
        await using ClusterDbContext db = await databases.CreateDbContextAsync(context.CancellationToken);
        WorkerRecord? worker = await db.Workers.FindAsync([m.WorkerId], context.CancellationToken);
        if (worker is null)
        {
            // The coordinator started after the worker: the heartbeat registers it.
            worker = new WorkerRecord { Id = m.WorkerId, Host = m.Host, Device = m.Device, Version = m.Version, StartedAt = m.SentAt };
            db.Workers.Add(worker);
        }
        else if (m.SentAt <= worker.LastHeartbeat || worker.Status == WorkerStatus.Stopped)
        {
            return;
        }
        // What it holds and whether it is busy, for sending it the segments of its prefixes (see SegmentPlacement).
        placement?.Heard(m);
        worker.Status = WorkerStatus.Alive;
        worker.LastHeartbeat = m.SentAt;
        worker.CurrentJob = m.CurrentJob;
        worker.Waiting = m.Waiting;
        worker.ImagesPerSecond = m.ImagesPerSecond;
        worker.ResidentBytes = m.ResidentBytes;
        worker.KernelCheck = m.KernelCheck ?? worker.KernelCheck;
        await db.SaveChangesAsync(context.CancellationToken);
    }

    public async Task Consume(ConsumeContext<WorkerStopping> context)
    {
        WorkerStopping m = context.Message;
        placement?.Stopped(m.WorkerId);
        await using ClusterDbContext db = await databases.CreateDbContextAsync(context.CancellationToken);
        WorkerRecord? worker = await db.Workers.FindAsync([m.WorkerId], context.CancellationToken);
        if (worker is null)
        {
            return;
        }
        worker.Status = WorkerStatus.Stopped;
        worker.CurrentJob = null;
        worker.Waiting = null;
        worker.ImagesPerSecond = null;
        worker.LastHeartbeat = Max(worker.LastHeartbeat, m.StoppedAt);
        await db.SaveChangesAsync(context.CancellationToken);
    }

    private static DateTime Max(DateTime a, DateTime b) => a > b ? a : b;
}
