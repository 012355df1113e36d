using Cluster.Contracts.SelfTest;
using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Hosting;
using Cluster.GpuWorker.Kernels;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace Cluster.GpuWorker.SelfTest;

/// <summary>
/// Runs a <see cref="RunSelfTest"/> job through the worker's job skeleton (<see cref="WorkerJobRunner"/>) and records its
/// result; a job already recorded (redelivery) is announced, not computed again. A failure goes to the bus's retry.
/// </summary>
public sealed class RunSelfTestConsumer(
    IDbContextFactory<ClusterDbContext> databases,
    WorkerIdentity identity,
    WorkerJobRunner runner,
    KernelVerifier kernels,
    LaneLayout lanes,
    ILogger<RunSelfTestConsumer> logger) : IConsumer<RunSelfTest>
{
    public Task Consume(ConsumeContext<RunSelfTest> context)
    {
        RunSelfTest job = context.Message;
        return runner.RunAsync($"selftest/{job.JobId}", new WorkerJob<SelfTestRunRecord>(
            FindRecorded: ct => FindAsync(job.JobId, ct),
            // libtorch blocks its thread; keep the consumer's thread free for the bus.
            Compute: ct => Task.Run(() => Compute(job, ct), ct),
            Record: RecordAsync,
            Completed: (record, _) => context.Publish(new SelfTestCompleted { JobId = record.JobId, WorkerId = record.WorkerId, Checksum = record.Checksum })),
            context.CancellationToken);
    }

    private async Task<SelfTestRunRecord?> FindAsync(Guid jobId, CancellationToken ct)
    {
        await using ClusterDbContext db = await databases.CreateDbContextAsync(ct);
        return await db.SelfTestRuns.AsNoTracking().SingleOrDefaultAsync(r => r.JobId == jobId, ct);
    }

    private SelfTestRunRecord Compute(RunSelfTest job, CancellationToken ct)
    {
        // The canary configurations are checked first (at no cost when the worker's start-up check has done it), so the
        // result says whether this worker's kernels can be trusted, not only that it computes.
        if (!identity.Device.IsCuda)
        {
            kernels.Resolve(KernelCanary.Configs(lanes.ThreadsPerLane));
        }
        SelfTestOutcome outcome = SelfTestComputation.Run(job, identity.Device.Device, kernels, ct);
        logger.LogInformation("Self-test {JobId}: output {Shape}, checksum {Checksum:R} in {Milliseconds:F0} ms on {Device}",
            job.JobId, outcome.OutputShape, outcome.Checksum, outcome.Milliseconds, identity.Device.Name);
        return new SelfTestRunRecord
        {
            JobId = job.JobId,
            WorkerId = identity.WorkerId,
            Device = identity.Device.Name,
            TorchVersion = outcome.TorchVersion,
            OutputShape = outcome.OutputShape,
            Checksum = outcome.Checksum,
            Milliseconds = outcome.Milliseconds,
            CompletedAt = DateTime.UtcNow,
            KernelCheck = kernels.Report.Summary,
        };
    }

    private async Task RecordAsync(SelfTestRunRecord record)
    {
        await using ClusterDbContext db = await databases.CreateDbContextAsync(CancellationToken.None);
        db.SelfTestRuns.Add(record);
        await db.SaveChangesAsync(CancellationToken.None);
    }
}
