using Cluster.Contracts.Training;
using Cluster.GpuWorker.Hosting;
using Cluster.Hosting;
using MassTransit;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Cluster.GpuWorker.Training;

/// <summary>
/// The worker's own queue: segments the coordinator sent here because this worker holds their frozen features in
/// memory. A directed segment runs only on a free lane; if this worker is busy (it took a job from the shared queue
/// meanwhile) the segment is passed on to the shared queue at once, where any idle worker takes it. Locality is a
/// preference and never a wait: no trial queues behind a busy worker while another is idle.
/// </summary>
public sealed class DirectedSegmentConsumer(JobLanes lanes, IServiceProvider services, WorkerIdentity identity, ILogger<DirectedSegmentConsumer> logger)
    : IConsumer<TrainSegment>
{
    /// <summary>A header on a segment passed on: whoever takes it checks whether it is recorded already.</summary>
    public const string PassedOnHeader = "Cluster-Passed-On-By";

    public async Task Consume(ConsumeContext<TrainSegment> context)
    {
        TrainSegment job = context.Message;
        // Refused on the shared queue's endpoint (ContractVersionFilter), whose error queue the coordinator watches.
        using (IDisposable? lane = job.Version == Contracts.ContractVersion.Current ? lanes.TryTake() : null)
        {
            if (lane is null)
            {
                logger.LogInformation("Segment {Segment} of trial {Trial} was sent here for its features, but this worker {Why}: passed on to the {Queue} queue",
                    job.Segment, job.TrialId, job.Version == Contracts.ContractVersion.Current ? "is busy" : $"does not read its contract version {job.Version}",
                    Contracts.QueueNames.GpuWork);
            }
            else
            {
                try
                {
                    // Resolved only when it runs here (from the consumer's scope): a segment passed on needs none of the trainer.
                    await services.GetRequiredService<TrainSegmentConsumer>().Consume(context);
                    return;
                }
                catch (Exception e) when (!context.CancellationToken.IsCancellationRequested)
                {
                    // This queue has no retry and its error queue is watched by nobody: the shared queue's endpoint retries
                    // the segment (on any worker) and sends what keeps failing where the coordinator fails its trial.
                    logger.LogWarning(e, "Segment {Segment} of trial {Trial} failed here: passed on to the {Queue} queue",
                        job.Segment, job.TrialId, Contracts.QueueNames.GpuWork);
                }
            }
        }
        await PassOnAsync(context, job);
    }

    private async Task PassOnAsync(ConsumeContext<TrainSegment> context, TrainSegment job)
    {
        ISendEndpoint shared = await context.GetSendEndpoint(ClusterBus.GpuWorkQueue);
        // Sent before this delivery is acknowledged: a crash in between leaves two copies, and the second finds the
        // segment recorded (at-least-once, as every redelivery).
        await shared.Send(job, send => send.Headers.Set(PassedOnHeader, identity.WorkerId), context.CancellationToken);
    }
}
