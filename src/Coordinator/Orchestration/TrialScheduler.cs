using System.Text.Json;
using Cluster.Contracts.Training;
using Cluster.Hosting;
using Cluster.Storage.Checkpoints;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Files;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace Cluster.Coordinator.Orchestration;

/// <summary>
/// The coordinator service's driver of trials, and the only writer of sweep and trial state: it records a submitted sweep
/// and sends each trial's first segment; on each <see cref="SegmentCompleted"/> it checks the event against the recorded
/// trial (a stale or duplicate event changes nothing), updates the trial, keeps its best and latest checkpoints, and sends
/// the next segment or ends the trial; a <see cref="SegmentFailed"/> fails the trial with its reason and the sweep goes on.
/// Driven by events, never by polling; one event at a time (the coordinator queue's limit).
/// </summary>
public sealed class TrialScheduler(IDbContextFactory<ClusterDbContext> databases, ClusterRuntimeSettings settings, ILogger<TrialScheduler> logger) :
    IConsumer<SubmitSweep>, IConsumer<SegmentCompleted>, IConsumer<SegmentFailed>, IConsumer<TrialProgress>
{
    private static readonly JsonSerializerOptions s_json = new(JsonSerializerDefaults.Web);

    public async Task Consume(ConsumeContext<SubmitSweep> context)
    {
        SubmitSweep m = context.Message;
        await using ClusterDbContext db = await databases.CreateDbContextAsync(context.CancellationToken);
        if (await db.Sweeps.AnyAsync(s => s.Id == m.SweepId, context.CancellationToken))
        {
            logger.LogInformation("Sweep {Sweep} is already recorded; not started again", m.SweepId);
            return;
        }
        DateTime now = DateTime.UtcNow;
        db.Sweeps.Add(new SweepRecord { Id = m.SweepId, Name = m.Name, SpecText = m.SpecText, SpecHash = m.SpecHash, Status = SweepStatus.Running, CreatedAt = now, StartedAt = now });
        foreach (PlannedTrial trial in m.Trials)
        {
            db.Trials.Add(new TrialRecord
            {
                Id = trial.TrialId, SweepId = m.SweepId, Number = trial.Number, Hyperparameters = trial.Params, Strategy = trial.Settings.Strategy,
                PrefixKey = trial.PrefixKey, Status = TrialStatus.Running, Plan = JsonSerializer.Serialize(trial, s_json),
                Epochs = trial.Settings.Epochs, SegmentEpochs = trial.SegmentEpochs, CreatedAt = now, StartedAt = now,
            });
        }
        await db.SaveChangesAsync(context.CancellationToken);
        foreach (PlannedTrial trial in m.Trials)
        {
            await context.Send(ClusterBus.GpuWorkQueue, SegmentPlan.Command(m.SweepId, trial, 0));
        }
        logger.LogInformation("Sweep {Sweep} ({Name}) started with {Trials} trial(s)", m.SweepId, m.Name, m.Trials.Count);
    }

    public async Task Consume(ConsumeContext<SegmentCompleted> context)
    {
        SegmentCompleted m = context.Message;
        await using ClusterDbContext db = await databases.CreateDbContextAsync(context.CancellationToken);
        TrialRecord? trial = await db.Trials.FindAsync([m.TrialId], context.CancellationToken);
        if (trial is null || trial.Status != TrialStatus.Running || trial.Plan is null)
        {
            logger.LogInformation("Segment {Segment} of trial {Trial} completed, but the trial is not running: ignored", m.Segment, m.TrialId);
            return;
        }
        PlannedTrial plan = JsonSerializer.Deserialize<PlannedTrial>(trial.Plan, s_json)!;
        IReadOnlyList<(int From, int To)> segments = SegmentPlan.Segments(plan.Settings, plan.SegmentEpochs);
        int expected = trial.Epoch is int done ? segments.ToList().FindIndex(s => s.From > done) : 0;
        if (m.Segment != expected)
        {
            // A redelivered or duplicated event for a segment already accounted for.
            logger.LogInformation("Segment {Segment} of trial {Trial} completed again (expected {Expected}): ignored", m.Segment, m.TrialId, expected);
            return;
        }
        trial.Epoch = m.Epoch;
        trial.ValidationAccuracy = m.ValidationAccuracy;
        trial.Seconds += m.Seconds;
        trial.Progress = null;
        if (m.ValidationAccuracy is double accuracy && (trial.BestMetric is not double best || accuracy > best))
        {
            trial.BestMetric = accuracy;
            trial.BestSegment = m.Segment;
            trial.Checkpoint = m.Checkpoint;
        }
        bool finished = m.StoppedEarly || m.Segment == segments.Count - 1;
        var keep = new HashSet<int> { trial.BestSegment ?? m.Segment };
        if (finished)
        {
            trial.Status = TrialStatus.Completed;
            trial.TestAccuracy = m.TestAccuracy;
            trial.CompletedAt = DateTime.UtcNow;
        }
        else
        {
            keep.Add(m.Segment);
        }
        await db.SaveChangesAsync(context.CancellationToken);
        // Best and latest while running (the next segment resumes from the latest); a finished trial keeps its best only.
        long freed = new CheckpointStore(new FileStore(settings.StorageRoot)).Retain(m.SweepId.ToString(), m.TrialId.ToString(), keep);
        logger.LogInformation("Trial {Trial} segment {Segment} done: validation accuracy {Accuracy:P2}; kept checkpoints {Kept}, freed {Freed} bytes",
            m.TrialId, m.Segment, m.ValidationAccuracy, string.Join(",", keep), freed);
        if (finished)
        {
            await CompleteSweepIfDoneAsync(db, trial.SweepId, context.CancellationToken);
        }
        else
        {
            await context.Send(ClusterBus.GpuWorkQueue, SegmentPlan.Command(m.SweepId, plan, m.Segment + 1));
        }
    }

    public async Task Consume(ConsumeContext<SegmentFailed> context)
    {
        SegmentFailed m = context.Message;
        await using ClusterDbContext db = await databases.CreateDbContextAsync(context.CancellationToken);
        TrialRecord? trial = await db.Trials.FindAsync([m.TrialId], context.CancellationToken);
        if (trial is null || trial.Status != TrialStatus.Running)
        {
            return;
        }
        // A failure the worker could explain (bad data, a checkpoint of another model) is not retried: it would fail the same way.
        trial.Attempts++;
        trial.Status = TrialStatus.Failed;
        trial.FailureReason = $"segment {m.Segment}: {m.Reason}";
        trial.Progress = null;
        trial.CompletedAt = DateTime.UtcNow;
        await db.SaveChangesAsync(context.CancellationToken);
        logger.LogWarning("Trial {Trial} failed in segment {Segment}: {Reason}", m.TrialId, m.Segment, m.Reason);
        await CompleteSweepIfDoneAsync(db, trial.SweepId, context.CancellationToken);
    }

    public async Task Consume(ConsumeContext<TrialProgress> context)
    {
        TrialProgress m = context.Message;
        await using ClusterDbContext db = await databases.CreateDbContextAsync(context.CancellationToken);
        int updated = await db.Trials.Where(t => t.Id == m.TrialId && t.Status == TrialStatus.Running)
            .ExecuteUpdateAsync(u => u.SetProperty(t => t.Progress, JsonSerializer.Serialize(m, s_json)), context.CancellationToken);
        _ = updated;
    }

    private static async Task CompleteSweepIfDoneAsync(ClusterDbContext db, Guid sweepId, CancellationToken ct)
    {
        List<TrialStatus> statuses = await db.Trials.Where(t => t.SweepId == sweepId).Select(t => t.Status).ToListAsync(ct);
        if (statuses.Any(s => s is TrialStatus.Running or TrialStatus.Pending or TrialStatus.WaitingForFeatures))
        {
            return;
        }
        SweepRecord sweep = (await db.Sweeps.FindAsync([sweepId], ct))!;
        // A sweep whose every trial failed has failed; one bad trial among good ones never fails the sweep.
        sweep.Status = statuses.All(s => s == TrialStatus.Failed) ? SweepStatus.Failed : SweepStatus.Completed;
        sweep.CompletedAt = DateTime.UtcNow;
        await db.SaveChangesAsync(ct);
    }
}
