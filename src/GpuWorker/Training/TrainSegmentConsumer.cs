using Cluster.Contracts.Training;
using Cluster.GpuWorker.Hosting;
using MassTransit;
using Microsoft.Extensions.Logging;

namespace Cluster.GpuWorker.Training;

/// <summary>
/// Runs a <see cref="TrainSegment"/> through the worker's job skeleton (<see cref="WorkerJobRunner"/>): a segment already
/// recorded is announced, not trained again; one that cannot be trained (bad data, a checkpoint of another model, no
/// verified kernel) is recorded as failed with the reason; a crash or a shutdown leaves the message to be redelivered,
/// and the next delivery resumes from the last good checkpoint.
/// </summary>
public sealed class TrainSegmentConsumer(SegmentTrainer trainer, WorkerIdentity identity, WorkerJobRunner runner, ILogger<TrainSegmentConsumer> logger) : IConsumer<TrainSegment>
{
    public Task Consume(ConsumeContext<TrainSegment> context)
    {
        TrainSegment job = context.Message;
        // Only a segment the coordinator sent again, or a message the broker or the retry filter delivers again, can
        // have been recorded already; a first delivery of a first send skips the lookup.
        // So can a directed segment that moved on to the shared queue: dead-lettered (RabbitMQ's x-death) after its worker
        // died with it unacknowledged, or passed on by a busy worker.
        bool mayBeRecorded = job.Resent || context.ReceiveContext.Redelivered || context.GetRetryAttempt() > 0 || context.GetRedeliveryCount() > 0
            || context.Headers.TryGetHeader("x-death", out _) || context.Headers.TryGetHeader(DirectedSegmentConsumer.PassedOnHeader, out _);
        return runner.RunAsync(SegmentTrainer.JobId(job), new WorkerJob<SegmentOutcome>(
            FindRecorded: ct => trainer.FindRecordedAsync(job, ct),
            Compute: ct => trainer.TrainAsync(job, progress => Publish(context, progress), ct),
            Record: outcome => trainer.RecordAsync(job, outcome),
            Completed: (outcome, _) => context.Publish(new SegmentCompleted
            {
                SweepId = job.SweepId, TrialId = job.TrialId, Segment = job.Segment, WorkerId = identity.WorkerId, Epoch = outcome.LastEpoch,
                ValidationAccuracy = outcome.ValidationAccuracy, ValidationLoss = outcome.ValidationLoss, TestAccuracy = outcome.TestAccuracy,
                StoppedEarly = outcome.StoppedEarly, Checkpoint = outcome.Checkpoint, Seconds = outcome.Seconds,
            }),
            Failed: async (reason, retriable) =>
            {
                await trainer.RecordFailureAsync(job, reason);
                // The coordinator tries an unexplained failure again (up to the sweep's attempts), elsewhere if it can.
                await context.Publish(new SegmentFailed
                {
                    SweepId = job.SweepId, TrialId = job.TrialId, Segment = job.Segment, WorkerId = identity.WorkerId, Reason = reason, Retriable = retriable,
                });
            }), context.CancellationToken, mayBeRecorded);
    }

    // Progress is best effort (about once a second, from the training thread): a lost one only delays a progress bar.
    private void Publish(ConsumeContext context, TrialProgress progress)
    {
        try
        {
            context.Publish(progress).GetAwaiter().GetResult();
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            logger.LogDebug(e, "Progress of trial {Trial} not published", progress.TrialId);
        }
    }
}
