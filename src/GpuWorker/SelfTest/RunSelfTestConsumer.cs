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

/// <summary>Runs a <see cref="RunSelfTest"/> job and records its result; skips a job already recorded (redelivery).</summary>
public sealed class RunSelfTestConsumer(
    IDbContextFactory<ClusterDbContext> databases,
    WorkerIdentity identity,
    JobTracker jobs,
    KernelVerifier kernels,
    LaneLayout lanes,
    ILogger<RunSelfTestConsumer> logger) : IConsumer<RunSelfTest>
{
    public async Task Consume(ConsumeContext<RunSelfTest> context)
    {
        RunSelfTest job = context.Message;
        string jobId = $"selftest/{job.JobId}";
        using IDisposable _ = jobs.Begin(jobId);
        using IDisposable __ = Serilog.Context.LogContext.PushProperty("JobId", jobId);

        await using (ClusterDbContext db = await databases.CreateDbContextAsync(context.CancellationToken))
        {
            SelfTestRunRecord? existing = await db.SelfTestRuns.AsNoTracking()
                .SingleOrDefaultAsync(r => r.JobId == job.JobId, context.CancellationToken);
            if (existing is not null)
            {
                logger.LogInformation("Self-test {JobId} was already recorded by {RecordedBy}; not computed again", job.JobId, existing.WorkerId);
                await PublishCompleted(context, existing);
                return;
            }
        }

        // libtorch blocks its thread; keep the consumer's thread free for the bus. The canary configurations are checked
        // first (at no cost when the worker's start-up check has done it), so the result says whether this worker's
        // kernels can be trusted, not only that it computes.
        (SelfTestOutcome outcome, string kernelCheck) = await Task.Run(() =>
        {
            if (!identity.Device.IsCuda)
            {
                kernels.Resolve(KernelCanary.Configs(lanes.ThreadsPerLane));
            }
            SelfTestOutcome result = SelfTestComputation.Run(job, identity.Device.Device, kernels, context.CancellationToken);
            return (result, kernels.Report.Summary);
        }, context.CancellationToken);

        var record = new SelfTestRunRecord
        {
            JobId = job.JobId,
            WorkerId = identity.WorkerId,
            Device = identity.Device.Name,
            TorchVersion = outcome.TorchVersion,
            OutputShape = outcome.OutputShape,
            Checksum = outcome.Checksum,
            Milliseconds = outcome.Milliseconds,
            CompletedAt = DateTime.UtcNow,
            KernelCheck = kernelCheck,
        };
        await using (ClusterDbContext db = await databases.CreateDbContextAsync(CancellationToken.None))
        {
            db.SelfTestRuns.Add(record);
            try
            {
                // Not cancellable: once computed, the result is worth keeping even while shutting down.
                await db.SaveChangesAsync(CancellationToken.None);
            }
            catch (DbUpdateException)
            {
                await using ClusterDbContext check = await databases.CreateDbContextAsync(CancellationToken.None);
                if (!await check.SelfTestRuns.AnyAsync(r => r.JobId == job.JobId))
                {
                    throw;
                }
                // Another delivery of the same job won the race; its row stands.
                logger.LogInformation("Self-test {JobId} was recorded concurrently by another delivery", job.JobId);
                return;
            }
        }
        logger.LogInformation("Self-test {JobId}: output {Shape}, checksum {Checksum:R} in {Milliseconds:F0} ms on {Device}",
            job.JobId, outcome.OutputShape, outcome.Checksum, outcome.Milliseconds, identity.Device.Name);
        await PublishCompleted(context, record);
    }

    private static Task PublishCompleted(ConsumeContext context, SelfTestRunRecord record) =>
        context.Publish(new SelfTestCompleted { JobId = record.JobId, WorkerId = record.WorkerId, Checksum = record.Checksum });
}
