using System.Text.Json;
using Cluster.Contracts.Features;
using Cluster.Contracts.Training;
using Cluster.Hosting;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Files;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace Cluster.Coordinator.Orchestration;

/// <summary>
/// The coordinator service's driver of sweeps, and the only writer of sweep and trial state: each event (a submitted
/// sweep, a segment completed or failed, cancel, resume, recovery after a restart) goes to a <see cref="SweepDriver"/>,
/// which checks it against the recorded state, runs the sweep's search method and saves; the segments it asks for are
/// sent after the save. Driven by events, never by polling; one event at a time (the coordinator queue's limit).
/// </summary>
public sealed class TrialScheduler(IDbContextFactory<ClusterDbContext> databases, ClusterRuntimeSettings settings, ILogger<TrialScheduler> logger,
    SegmentPlacement? placement = null) :
    IConsumer<SubmitSweep>, IConsumer<SegmentCompleted>, IConsumer<SegmentFailed>, IConsumer<TrialProgress>,
    IConsumer<CancelSweep>, IConsumer<ResumeSweep>, IConsumer<RecoverSweeps>, IConsumer<FeatureSetSettled>
{
    private static readonly JsonSerializerOptions s_json = new(JsonSerializerDefaults.Web);

    // Without the service's placement (a test that drives the scheduler alone), every segment goes to the shared queue.
    private readonly SegmentPlacement _placement = placement ?? new SegmentPlacement();

    public Task Consume(ConsumeContext<SubmitSweep> context) => DriveAsync(context, (d, ct) => d.SubmitAsync(context.Message, ct));

    // The outcome frees its worker's lane first, so the trial's next segment can go back to the worker holding its features.
    public Task Consume(ConsumeContext<SegmentCompleted> context)
    {
        _placement.Finished(context.Message.WorkerId, context.Message.TrialId, context.Message.Segment);
        return DriveAsync(context, (d, ct) => d.SegmentCompletedAsync(context.Message, ct));
    }

    public Task Consume(ConsumeContext<SegmentFailed> context)
    {
        _placement.Finished(context.Message.WorkerId, context.Message.TrialId, context.Message.Segment, failed: true);
        return DriveAsync(context, (d, ct) => d.SegmentFailedAsync(context.Message, ct));
    }

    public Task Consume(ConsumeContext<CancelSweep> context) => DriveAsync(context, (d, ct) => d.CancelAsync(context.Message.SweepId, ct));

    public Task Consume(ConsumeContext<ResumeSweep> context) => DriveAsync(context, (d, ct) => d.ResumeAsync(context.Message.SweepId, context.Message.InFlightLost, ct));

    public async Task Consume(ConsumeContext<RecoverSweeps> context)
    {
        IReadOnlyList<TrainSegment> sends = await AcrossSweepsAsync(context, SweepDriver.RecoverAllAsync);
        logger.LogInformation("Coordinator started: {Segments} dispatched segment(s) of running sweeps sent again", sends.Count);
    }

    public async Task Consume(ConsumeContext<FeatureSetSettled> context)
    {
        IReadOnlyList<TrainSegment> sends = await AcrossSweepsAsync(context, SweepDriver.FeatureSetSettledAsync);
        logger.LogInformation("Feature set {Key} {Outcome}: {Segments} waiting trial segment(s) sent", context.Message.FeatureSetKey,
            context.Message.Failure is null ? "complete" : "failed", sends.Count);
    }

    /// <summary>An event that concerns every running sweep: one driver (and database context) per sweep, then the sends.</summary>
    private async Task<IReadOnlyList<TrainSegment>> AcrossSweepsAsync(ConsumeContext context,
        Func<Func<SweepDriver>, ClusterDbContext, CancellationToken, Task<IReadOnlyList<TrainSegment>>> handle)
    {
        await using ClusterDbContext db = await databases.CreateDbContextAsync(context.CancellationToken);
        var contexts = new List<ClusterDbContext>();
        try
        {
            IReadOnlyList<TrainSegment> sends = await handle(() =>
            {
                ClusterDbContext own = databases.CreateDbContext();
                contexts.Add(own);
                return Driver(own);
            }, db, context.CancellationToken);
            await SendAsync(context, sends);
            return sends;
        }
        finally
        {
            foreach (ClusterDbContext own in contexts)
            {
                await own.DisposeAsync();
            }
        }
    }

    public async Task Consume(ConsumeContext<TrialProgress> context)
    {
        TrialProgress m = context.Message;
        await using ClusterDbContext db = await databases.CreateDbContextAsync(context.CancellationToken);
        await db.Trials.Where(t => t.Id == m.TrialId && t.Status == TrialStatus.Running && t.DispatchedSegment == m.Segment)
            .ExecuteUpdateAsync(u => u.SetProperty(t => t.Progress, JsonSerializer.Serialize(m, s_json)), context.CancellationToken);
    }

    private SweepDriver Driver(ClusterDbContext db) => new(db, new FileStore(settings.StorageRoot), logger);

    private async Task DriveAsync(ConsumeContext context, Func<SweepDriver, CancellationToken, Task<IReadOnlyList<TrainSegment>>> handle)
    {
        await using ClusterDbContext db = await databases.CreateDbContextAsync(context.CancellationToken);
        IReadOnlyList<TrainSegment> sends = await handle(Driver(db), context.CancellationToken);
        await SendAsync(context, sends);
    }

    private async Task SendAsync(ConsumeContext context, IReadOnlyList<TrainSegment> sends)
    {
        foreach (TrainSegment segment in sends)
        {
            Uri address = _placement.Route(segment);
            if (_placement.DirectedTo(segment.TrialId, segment.Segment) is string worker)
            {
                logger.LogInformation("Segment {Segment} of trial {Trial} sent to worker {Worker}, which holds its features in memory",
                    segment.Segment, segment.TrialId, worker);
            }
            ISendEndpoint queue = await context.GetSendEndpoint(address);
            await queue.Send(segment, context.CancellationToken);
        }
    }
}
