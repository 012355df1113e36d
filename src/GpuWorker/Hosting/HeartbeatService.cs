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
        var started = new WorkerStarted
        {
            WorkerId = identity.WorkerId,
            Host = identity.Host,
            Device = identity.Device.Name,
            Version = identity.Version,
            StartedAt = DateTime.UtcNow,
        };
        // Until it is sent, it is tried again before each heartbeat: it marks a worker of a known id alive again after it
        // was recorded stopped, which a heartbeat does not.
        bool announced = await PublishBoundedAsync(started, null, "start announcement", stoppingToken);
        logger.LogInformation("Worker {WorkerId} on {Device} ({Lanes}) is taking jobs from the {Queue} queue",
            identity.WorkerId, identity.Device.Name, lanes.ToString(), Contracts.QueueNames.GpuWork);

        using var timer = new PeriodicTimer(interval);
        do
        {
            if (!announced)
            {
                announced = await PublishBoundedAsync(started, null, "start announcement", stoppingToken);
            }
            await PublishBoundedAsync(new WorkerHeartbeat
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
            }, context => context.TimeToLive = HeartbeatTimeToLive, "heartbeat", stoppingToken);
        }
        while (await timer.WaitForNextTickAsync(stoppingToken));
    }

    /// <summary>How long a heartbeat lives unread in the broker, and how long one publish may take.</summary>
    private TimeSpan HeartbeatTimeToLive => interval * 3;

    /// <summary>
    /// Publishes one announcement, giving up after a heartbeat's time to live. A publish caught in flight when the broker
    /// froze or the connection broke can wait for a confirm that never comes, whatever its token says
    /// (rabbitmq-dotnet-client#1930); the loop must not wait with it, or this worker sends no heartbeat again and is shown
    /// lost while it runs. A heartbeat older than its time to live is worthless anyway: the next one replaces it.
    /// </summary>
    /// <returns>Whether the broker took it.</returns>
    private async Task<bool> PublishBoundedAsync<T>(T message, Action<PublishContext<T>>? configure, string what, CancellationToken stoppingToken)
        where T : class
    {
        TimeSpan bound = HeartbeatTimeToLive;
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken);
        deadline.CancelAfter(bound);
        Task publish = bus.Publish(message, context => configure?.Invoke(context), deadline.Token);
        try
        {
            await publish.WaitAsync(bound, stoppingToken);
            return true;
        }
        catch (TimeoutException)
        {
            // Observed later, so that an abandoned publish that does fail leaves no unobserved exception behind.
            _ = publish.ContinueWith(static t => t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
            logger.LogWarning("The {What} of worker {WorkerId} was not sent within {Bound}; the broker did not confirm it, and the next one goes on",
                what, identity.WorkerId, bound);
            return false;
        }
        catch (Exception e) when (!stoppingToken.IsCancellationRequested)
        {
            // A missed heartbeat is not fatal; the bus reconnects on its own. (Its own deadline's cancellation lands here too.)
            logger.LogWarning(e, "The {What} of worker {WorkerId} was not sent", what, identity.WorkerId);
            return false;
        }
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
