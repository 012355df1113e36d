using Cluster.Contracts.Workers;
using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Kernels;
using MassTransit;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Cluster.GpuWorker.Hosting;

/// <summary>
/// Announces the worker, sends a heartbeat every few seconds (device, version, current job, images/s), and
/// says when it stops. Heartbeats expire unread after a few intervals: a coordinator that was down does
/// not wake up to a backlog of stale ones.
/// </summary>
public sealed class HeartbeatService(
    IBus bus, WorkerIdentity identity, JobTracker jobs, LaneLayout lanes, KernelVerifier kernels, TimeSpan interval, ILogger<HeartbeatService> logger,
    Extraction.ResidentFeatureSets? residentFeatures = null)
    : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        await bus.Publish(new WorkerStarted
        {
            WorkerId = identity.WorkerId,
            Host = identity.Host,
            Device = identity.Device.Name,
            Version = identity.Version,
            StartedAt = DateTime.UtcNow,
        }, stoppingToken);
        logger.LogInformation("Worker {WorkerId} on {Device} ({Lanes}) is taking jobs from the {Queue} queue",
            identity.WorkerId, identity.Device.Name, lanes.ToString(), Contracts.QueueNames.GpuWork);

        using var timer = new PeriodicTimer(interval);
        do
        {
            try
            {
                await bus.Publish(new WorkerHeartbeat
                {
                    WorkerId = identity.WorkerId,
                    Host = identity.Host,
                    Device = identity.Device.Name,
                    Version = identity.Version,
                    SentAt = DateTime.UtcNow,
                    CurrentJob = jobs.CurrentJob,
                    Waiting = jobs.Waiting,
                    ImagesPerSecond = jobs.ImagesPerSecond,
                    ResidentBytes = Environment.WorkingSet,
                    KernelCheck = kernels.Report is { Checked: > 0 } report ? report.Summary : null,
                    ResidentFeatureSets = residentFeatures?.Keys ?? [],
                    ResidentFeatureBytes = residentFeatures?.Bytes ?? 0,
                    DirectQueue = identity.DirectQueue,
                }, context => context.TimeToLive = interval * 3, stoppingToken);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                // A missed heartbeat is not fatal; the bus reconnects on its own.
                logger.LogWarning(e, "Heartbeat of worker {WorkerId} not sent", identity.WorkerId);
            }
        }
        while (await timer.WaitForNextTickAsync(stoppingToken));
    }

    public override async Task StopAsync(CancellationToken cancellationToken)
    {
        await base.StopAsync(cancellationToken);
        string? interrupted = jobs.CurrentJob;
        if (interrupted is not null)
        {
            logger.LogWarning("Worker {WorkerId} stopping with job {JobId} unfinished; it goes back to the queue for another worker",
                identity.WorkerId, interrupted);
        }
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(TimeSpan.FromSeconds(5));
            await bus.Publish(new WorkerStopping
            {
                WorkerId = identity.WorkerId,
                StoppedAt = DateTime.UtcNow,
                InterruptedJob = interrupted,
            }, timeout.Token);
        }
        catch (Exception e)
        {
            logger.LogWarning(e, "Could not announce that worker {WorkerId} stops", identity.WorkerId);
        }
    }
}
