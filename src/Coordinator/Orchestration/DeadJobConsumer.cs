using Cluster.Contracts.Features;
using Cluster.Contracts.SelfTest;
using Cluster.Contracts.Training;
using Cluster.Hosting;
using Cluster.Storage.Database;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace Cluster.Coordinator.Orchestration;

/// <summary>
/// Fails what waits on a job that reached the error queue, with the reason: a segment's trial (the sweep goes on with the
/// others), an extraction shard (its feature set settles as failed, and asking again retries the shard). Over RabbitMQ it
/// reads a copy of each dead job (<see cref="Contracts.QueueNames.DeadJobs"/>), so the error queue keeps the job itself for
/// `coordinator errors`; embedded, it consumes the in-memory error queue. Nothing is sent to a worker from here.
/// </summary>
public sealed class DeadJobConsumer(IDbContextFactory<ClusterDbContext> databases, ILogger<DeadJobConsumer> logger) :
    IConsumer<TrainSegment>, IConsumer<ExtractFeatures>, IConsumer<RunSelfTest>
{
    /// <summary>Who failed the job, on its rows and events: no worker could record it.</summary>
    public const string FailedBy = "error-queue";

    public async Task Consume(ConsumeContext<TrainSegment> context)
    {
        TrainSegment job = context.Message;
        string reason = ReasonOf(context);
        logger.LogError("Segment {Segment} of trial {Trial} (sweep {Sweep}) is in the error queue, its trial fails: {Reason}",
            job.Segment, job.TrialId, job.SweepId, reason);
        await using (ClusterDbContext db = await databases.CreateDbContextAsync(context.CancellationToken))
        {
            await JobFailures.RecordSegmentAsync(db, job, FailedBy, reason, context.CancellationToken);
        }
        // Not retriable: it failed on every worker that tried it, as often as the queue allows. The scheduler ignores it if
        // the segment was finished meanwhile (a copy of it completed elsewhere).
        await context.Publish(new SegmentFailed
        {
            SweepId = job.SweepId, TrialId = job.TrialId, Segment = job.Segment, WorkerId = FailedBy, Reason = reason, Retriable = false,
        });
    }

    public async Task Consume(ConsumeContext<ExtractFeatures> context)
    {
        ExtractFeatures job = context.Message;
        string reason = ReasonOf(context);
        logger.LogError("Shard {Shard} of feature set {Key} is in the error queue, it fails: {Reason}", job.ShardIndex, job.FeatureSetKey, reason);
        IReadOnlyList<string> failed;
        await using (ClusterDbContext db = await databases.CreateDbContextAsync(context.CancellationToken))
        {
            failed = await JobFailures.RecordShardAsync(db, job, FailedBy, reason, context.CancellationToken);
        }
        // A set whose shard another delivery completed is not failed by this copy.
        foreach (string key in failed)
        {
            await context.Publish(new FeatureShardFailed { FeatureSetKey = key, ShardIndex = job.ShardIndex, WorkerId = FailedBy, Reason = reason });
        }
    }

    public Task Consume(ConsumeContext<RunSelfTest> context)
    {
        // Nothing waits on a self-test but the command that sent it, which gives up on its own deadline.
        logger.LogError("Self-test job {Job} is in the error queue: {Reason}", context.Message.JobId, ReasonOf(context));
        return Task.CompletedTask;
    }

    /// <summary>
    /// The broker's dead-letter headers and the fault headers MassTransit adds on its way to the error queue are transport
    /// headers: <c>context.Headers</c> holds the envelope's (what the sender wrote) for a serialized message, so the
    /// transport's are read first.
    /// </summary>
    private static string ReasonOf(ConsumeContext context) =>
        DeadJobReason.Describe(name =>
            context.ReceiveContext.TransportHeaders.TryGetHeader(name, out object? transport) ? transport
            : context.Headers.TryGetHeader(name, out object? envelope) ? envelope
            : null, JobQueues.DeliveryLimit);
}
