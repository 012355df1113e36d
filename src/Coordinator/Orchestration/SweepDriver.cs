using System.Text.Json;
using Cluster.Contracts.Training;
using Cluster.Coordinator.Search;
using Cluster.Storage.Checkpoints;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Files;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace Cluster.Coordinator.Orchestration;

/// <summary>
/// Applies one event to a recorded sweep, as determined's experiment actor does in Receive → processOperations: it
/// checks the event against the trial's recorded state (a duplicate, reordered or late event changes nothing), tells
/// the sweep's search method what happened, applies the operations the method returns (create, train until, close,
/// complete), and saves all of it (trial rows and the method's snapshot) in one SaveChanges. It returns the segments to
/// send, which the caller sends only after the save: a crash between the two loses no state, and the service's
/// recovery on start sends again what was dispatched and not reported.
/// No bus here: the scheduler's tests drive it with events and read the segments it asks for.
/// </summary>
public sealed class SweepDriver(ClusterDbContext db, FileStore store, ILogger logger, TimeProvider? clock = null)
{
    private static readonly JsonSerializerOptions s_json = new(JsonSerializerDefaults.Web);

    private readonly TimeProvider _clock = clock ?? TimeProvider.System;
    private readonly Dictionary<int, TrialRecord> _trials = [];
    private readonly Dictionary<Guid, PlannedTrial> _plans = [];
    private readonly List<TrainSegment> _sends = [];
    private readonly List<(TrialRecord Trial, HashSet<int> Keep)> _retain = [];
    private readonly Dictionary<string, (bool Ready, string? Failure)> _inputs = new(StringComparer.Ordinal);
    private SweepRecord _sweep = null!;
    private ISearchMethod _method = null!;
    private SweepSearch _search = null!;

    private DateTime Now => _clock.GetUtcNow().UtcDateTime;

    /// <summary>Records a submitted sweep (once: a second submission of the same id changes nothing) and starts its search.</summary>
    public async Task<IReadOnlyList<TrainSegment>> SubmitAsync(SubmitSweep m, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(m);
        if (await db.Sweeps.AnyAsync(s => s.Id == m.SweepId, ct))
        {
            logger.LogInformation("Sweep {Sweep} is already recorded; not started again", m.SweepId);
            return [];
        }
        DateTime now = Now;
        SweepSearch search = m.Search ?? SearchMethods.All(m.Trials.Count);
        _sweep = new SweepRecord
        {
            Id = m.SweepId, Name = m.Name, SpecText = m.SpecText, SpecHash = m.SpecHash, Status = SweepStatus.Running, CreatedAt = now, StartedAt = now,
            Search = JsonSerializer.Serialize(search, s_json), MaxAttempts = Math.Max(1, m.MaxAttempts),
            Deadline = m.WallTimeSeconds is double seconds ? now.AddSeconds(seconds) : null,
        };
        db.Sweeps.Add(_sweep);
        foreach (PlannedTrial trial in m.Trials)
        {
            var record = new TrialRecord
            {
                Id = trial.TrialId, SweepId = m.SweepId, Number = trial.Number, Hyperparameters = trial.Params, Strategy = trial.Settings.Strategy,
                PrefixKey = trial.PrefixKey, Status = TrialStatus.Pending, Plan = JsonSerializer.Serialize(trial, s_json),
                Epochs = trial.Settings.Epochs, SegmentEpochs = trial.SegmentEpochs, CreatedAt = now,
            };
            db.Trials.Add(record);
            _trials[trial.Number] = record;
            _plans[trial.TrialId] = trial;
        }
        _search = search;
        int[] epochs = [.. m.Trials.OrderBy(t => t.Number).Select(t => t.Settings.Epochs)];
        _method = SearchMethods.Create(search, m.Trials.Count, n => epochs[n]);
        await ApplyAsync(_method.Start(), ct);
        await SaveAsync(ct);
        logger.LogInformation("Sweep {Sweep} ({Name}) started: {Method} over {Trials} configuration(s), {Parallelism} at a time",
            m.SweepId, m.Name, search.Method, m.Trials.Count, search.Parallelism);
        return _sends;
    }

    public async Task<IReadOnlyList<TrainSegment>> SegmentCompletedAsync(SegmentCompleted m, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(m);
        TrialRecord? trial = await LoadForEventAsync(m.SweepId, m.TrialId, m.Segment, "completed", ct);
        if (trial is null)
        {
            return [];
        }
        trial.DispatchedSegment = null;
        trial.DispatchedAt = null;
        trial.CompletedSegments = m.Segment + 1;
        trial.Epoch = m.Epoch;
        trial.ValidationAccuracy = m.ValidationAccuracy;
        trial.ValidationLoss = m.ValidationLoss;
        trial.TestAccuracy = m.TestAccuracy ?? trial.TestAccuracy;
        trial.StoppedEarly |= m.StoppedEarly;
        trial.Seconds += m.Seconds;
        trial.Progress = null;
        trial.WorkerId = m.WorkerId;
        if (m.ValidationAccuracy is double accuracy && (trial.BestMetric is not double best || accuracy > best))
        {
            trial.BestMetric = accuracy;
            trial.BestSegment = m.Segment;
            trial.Checkpoint = m.Checkpoint;
        }
        // Best and latest while it runs: the next segment resumes from the latest.
        _retain.Add((trial, [trial.BestSegment ?? m.Segment, m.Segment]));
        logger.LogInformation("Trial {Trial} (#{Number}) segment {Segment} done by {Worker}: epoch {Epoch}, validation accuracy {Accuracy:P2}",
            trial.Id, trial.Number, m.Segment, m.WorkerId, m.Epoch, m.ValidationAccuracy);
        if (ReachedTarget(trial))
        {
            await ApplyAsync(_method.TrialReported(trial.Number, MetricOf(trial)), ct);
        }
        else
        {
            Dispatch(trial);
        }
        await EndIfDrainedAsync(ct);
        await SaveAsync(ct);
        return _sends;
    }

    public async Task<IReadOnlyList<TrainSegment>> SegmentFailedAsync(SegmentFailed m, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(m);
        TrialRecord? trial = await LoadForEventAsync(m.SweepId, m.TrialId, m.Segment, "failed", ct);
        if (trial is null)
        {
            return [];
        }
        trial.DispatchedSegment = null;
        trial.DispatchedAt = null;
        trial.Progress = null;
        trial.Attempts++;
        if (m.Retriable && trial.Attempts < _sweep.MaxAttempts)
        {
            logger.LogWarning("Trial {Trial} segment {Segment} failed (attempt {Attempt} of {Attempts}), sent again: {Reason}",
                trial.Id, m.Segment, trial.Attempts, _sweep.MaxAttempts, m.Reason);
            Dispatch(trial, resent: true);
        }
        else
        {
            // A failure the worker could explain (bad data, a checkpoint of another model) is not retried: it would fail the same way.
            Fail(trial, $"segment {m.Segment}: {m.Reason}" + (m.Retriable ? $" (after {trial.Attempts} attempts)" : ""));
            await ApplyAsync(_method.TrialFailed(trial.Number), ct);
        }
        await EndIfDrainedAsync(ct);
        await SaveAsync(ct);
        return _sends;
    }

    /// <summary>Stops dispatching; what is in flight still reports and is recorded (and told to the search), but nothing new is sent.</summary>
    public async Task<IReadOnlyList<TrainSegment>> CancelAsync(Guid sweepId, CancellationToken ct)
    {
        if (!await LoadSweepAsync(sweepId, ct) || _sweep.Status != SweepStatus.Running)
        {
            return [];
        }
        _sweep.Status = SweepStatus.Cancelled;
        _sweep.StopReason = "cancelled";
        logger.LogInformation("Sweep {Sweep} cancelled: nothing more is dispatched", sweepId);
        await SaveAsync(ct);
        return [];
    }

    /// <summary>
    /// Continues a cancelled or interrupted sweep: every trial the search has asked to train and that has nothing in flight
    /// gets its next segment. <paramref name="inFlightLost"/>: the caller knows no segment is in flight (an embedded
    /// process starting, whose in-memory queue died with the last one), so those recorded as dispatched are sent again.
    /// </summary>
    public async Task<IReadOnlyList<TrainSegment>> ResumeAsync(Guid sweepId, bool inFlightLost, CancellationToken ct)
    {
        if (!await LoadSweepAsync(sweepId, ct) || _sweep.Status is not (SweepStatus.Cancelled or SweepStatus.Running))
        {
            return [];
        }
        if (_sweep.Status == SweepStatus.Cancelled)
        {
            _sweep.Status = SweepStatus.Running;
            _sweep.StopReason = null;
            logger.LogInformation("Sweep {Sweep} resumed", sweepId);
        }
        await RedispatchAsync(inFlightLost, ct);
        await EndIfDrainedAsync(ct);
        await SaveAsync(ct);
        return _sends;
    }

    /// <summary>
    /// After a coordinator restart: every running sweep's dispatched segments are sent again (the send may have been lost
    /// in the crash; a worker that finds a segment recorded reports it again, which the scheduler then ignores).
    /// </summary>
    public static async Task<IReadOnlyList<TrainSegment>> RecoverAllAsync(Func<SweepDriver> drivers, ClusterDbContext db, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(drivers);
        ArgumentNullException.ThrowIfNull(db);
        List<Guid> running = await db.Sweeps.AsNoTracking().Where(s => s.Status == SweepStatus.Running).Select(s => s.Id).ToListAsync(ct);
        var sends = new List<TrainSegment>();
        foreach (Guid id in running)
        {
            sends.AddRange(await drivers().ResumeAsync(id, inFlightLost: true, ct));
        }
        return sends;
    }

    // ---- loading ----

    private async Task<bool> LoadSweepAsync(Guid sweepId, CancellationToken ct)
    {
        SweepRecord? sweep = await db.Sweeps.FindAsync([sweepId], ct);
        if (sweep is null)
        {
            return false;
        }
        _sweep = sweep;
        int configurations = await db.Trials.CountAsync(t => t.SweepId == sweepId, ct);
        _search = sweep.Search is string json ? JsonSerializer.Deserialize<SweepSearch>(json, s_json)! : SearchMethods.All(configurations);
        // Only grid and random ask for a configuration's epochs (as each trial is created); a few ints per event.
        int[] epochs = _search.Method == "asha" ? [] : [.. await db.Trials.Where(t => t.SweepId == sweepId).OrderBy(t => t.Number).Select(t => t.Epochs).ToListAsync(ct)];
        _method = SearchMethods.Create(_search, configurations, n => epochs[n]);
        if (sweep.SearchState is string state)
        {
            _method.Restore(state);
        }
        else
        {
            // A sweep recorded before search methods were (one trial, all at once): its trials were started at submission.
            _method.Start();
        }
        return true;
    }

    /// <summary>The event's trial when the event is the one the trial waits for; null (and a log line) for anything else.</summary>
    private async Task<TrialRecord?> LoadForEventAsync(Guid sweepId, Guid trialId, int segment, string what, CancellationToken ct)
    {
        TrialRecord? trial = await db.Trials.FindAsync([trialId], ct);
        if (trial is null || trial.Status != TrialStatus.Running || trial.DispatchedSegment != segment || !await LoadSweepAsync(trial.SweepId, ct))
        {
            logger.LogInformation("Segment {Segment} of trial {Trial} {What}, but the trial does not wait for it (a duplicate, late or stale event): ignored",
                segment, trialId, what);
            return null;
        }
        if (trial.SweepId != sweepId)
        {
            logger.LogWarning("Segment {Segment} of trial {Trial} names sweep {Sweep}, but the trial is of sweep {Recorded}: ignored", segment, trialId, sweepId, trial.SweepId);
            return null;
        }
        _trials[trial.Number] = trial;
        return trial;
    }

    private async Task<TrialRecord> TrialAsync(int number, CancellationToken ct)
    {
        if (!_trials.TryGetValue(number, out TrialRecord? trial))
        {
            trial = await db.Trials.SingleAsync(t => t.SweepId == _sweep.Id && t.Number == number, ct);
            _trials[number] = trial;
        }
        return trial;
    }

    private PlannedTrial PlanOf(TrialRecord trial)
    {
        if (!_plans.TryGetValue(trial.Id, out PlannedTrial? plan))
        {
            plan = JsonSerializer.Deserialize<PlannedTrial>(trial.Plan!, s_json)!;
            _plans[trial.Id] = plan;
        }
        return plan;
    }

    // ---- the search method's operations ----

    private async Task ApplyAsync(IReadOnlyList<SearchOperation> operations, CancellationToken ct)
    {
        // A trial that cannot train further (it stopped early, or a feature-extractor head trained in one go) reports at
        // once, and that report's operations join the queue: processed in order, never recursively.
        var queue = new Queue<SearchOperation>(operations);
        while (queue.TryDequeue(out SearchOperation? operation))
        {
            switch (operation)
            {
                case CreateTrial create:
                {
                    if (create.Trial != create.Configuration)
                    {
                        throw new InvalidOperationException($"trial {create.Trial} asks for configuration {create.Configuration}: the scheduler keeps one trial per configuration");
                    }
                    TrialRecord trial = await TrialAsync(create.Trial, ct);
                    trial.StartedAt ??= Now;
                    break;
                }
                case TrainUntil train:
                {
                    TrialRecord trial = await TrialAsync(train.Trial, ct);
                    if (trial.Status is TrialStatus.Failed or TrialStatus.Completed or TrialStatus.Stopped)
                    {
                        break;
                    }
                    trial.TargetEpochs = Math.Max(trial.TargetEpochs, train.Epochs);
                    if (ReachedTarget(trial))
                    {
                        trial.Status = TrialStatus.Running;
                        foreach (SearchOperation next in _method.TrialReported(trial.Number, MetricOf(trial)))
                        {
                            queue.Enqueue(next);
                        }
                        break;
                    }
                    // Its frozen prefix may still be extracting: then it waits, out of the method's slots, and trials
                    // whose features are ready train meanwhile; the set's FeatureSetSettled sends it.
                    (bool ready, string? failure) = await InputsAsync(trial, ct);
                    IReadOnlyList<SearchOperation> after = [];
                    if (failure is not null)
                    {
                        Fail(trial, failure);
                        after = _method.TrialFailed(trial.Number);
                    }
                    else if (!ready)
                    {
                        trial.Status = TrialStatus.WaitingForFeatures;
                        after = _method.TrialBlocked(trial.Number);
                    }
                    else
                    {
                        trial.Status = TrialStatus.Running;
                        Dispatch(trial);
                    }
                    foreach (SearchOperation next in after)
                    {
                        queue.Enqueue(next);
                    }
                    break;
                }
                case CloseTrial close:
                {
                    TrialRecord trial = await TrialAsync(close.Trial, ct);
                    if (trial.Status is TrialStatus.Running or TrialStatus.Pending)
                    {
                        bool trainedAll = trial.StoppedEarly || TrainedEpochs(trial) >= trial.Epochs || trial.Strategy == "feature-extractor";
                        trial.Status = trainedAll ? TrialStatus.Completed : TrialStatus.Stopped;
                        trial.CompletedAt = Now;
                        trial.Progress = null;
                        if (trial.BestSegment is int best)
                        {
                            _retain.Add((trial, [best]));
                        }
                    }
                    break;
                }
                case CompleteSearch:
                    await FinishAsync(null, ct);
                    break;
            }
        }
    }

    private static int TrainedEpochs(TrialRecord trial) => (trial.Epoch ?? -1) + 1;

    /// <summary>The trial trained what the search asked (or can train no more).</summary>
    private static bool ReachedTarget(TrialRecord trial) =>
        trial.StoppedEarly || TrainedEpochs(trial) >= Math.Min(trial.TargetEpochs, trial.Epochs)
        || (trial.Strategy == "feature-extractor" && trial.CompletedSegments > 0);

    private double MetricOf(TrialRecord trial)
    {
        double? value = _search.Metric == "val_loss" ? trial.ValidationLoss : trial.ValidationAccuracy;
        return value ?? double.NaN;
    }

    /// <summary>Sends the trial's next segment: from its last recorded epoch up to the search's target, at most a segment's epochs.</summary>
    /// <param name="resent">The segment may have been sent before (a retry): the worker checks whether it is already recorded.</param>
    private void Dispatch(TrialRecord trial, bool resent = false)
    {
        if (_sweep.Status != SweepStatus.Running || trial.DispatchedSegment is not null || PastDeadline)
        {
            return;
        }
        _sends.Add(SegmentCommand(trial, trial.CompletedSegments, resent));
        trial.DispatchedSegment = trial.CompletedSegments;
        trial.DispatchedAt = Now;
    }

    private TrainSegment SegmentCommand(TrialRecord trial, int segment, bool resent)
    {
        PlannedTrial plan = PlanOf(trial);
        int epochs = plan.Settings.Epochs;
        (int from, int to) = plan.Settings.Strategy == "feature-extractor"
            ? (0, epochs)
            : (TrainedEpochs(trial), Math.Min(TrainedEpochs(trial) + Math.Max(1, plan.SegmentEpochs), Math.Min(trial.TargetEpochs, epochs)));
        return new TrainSegment
        {
            SweepId = _sweep.Id, TrialId = trial.Id, Segment = segment, EpochFrom = from, EpochTo = to,
            IsLast = to >= epochs, Settings = plan.Settings, Data = plan.Data, Resent = resent,
        };
    }

    /// <summary>
    /// Whether the feature sets the trial trains on are complete (ready), or cannot complete (the failure, naming the
    /// set and its failed shard); neither: still extracting, or not yet planned by the service. Statuses are read once an
    /// event and kept, so a sweep whose trials share a set asks the database once.
    /// </summary>
    private async Task<(bool Ready, string? Failure)> InputsAsync(TrialRecord trial, CancellationToken ct)
    {
        PlannedTrial plan = PlanOf(trial);
        IReadOnlyList<string> keys = plan.Data.FeatureSetKeys();
        string[] unknown = [.. keys.Where(k => !_inputs.ContainsKey(k))];
        if (unknown.Length > 0)
        {
            var sets = await db.FeatureSets.AsNoTracking().Where(f => unknown.Contains(f.Key)).Select(f => new { f.Key, f.Status }).ToListAsync(ct);
            var failedShards = await db.FeatureShards.AsNoTracking().Where(f => unknown.Contains(f.FeatureSetKey) && f.Status == FeatureShardStatus.Failed)
                .OrderBy(f => f.Index).Select(f => new { f.FeatureSetKey, f.Index, f.FailureReason }).ToListAsync(ct);
            foreach (string key in unknown)
            {
                var failed = failedShards.FirstOrDefault(f => f.FeatureSetKey == key);
                _inputs[key] = sets.FirstOrDefault(f => f.Key == key)?.Status == FeatureSetStatus.Complete ? (true, null)
                    : failed is not null ? (false, $"shard {failed.Index} of feature set {key} failed: {failed.FailureReason ?? "unknown"}")
                    : (false, null);
            }
        }
        foreach (string key in keys)
        {
            if (_inputs[key].Failure is string failure)
            {
                return (false, failure);
            }
        }
        return (keys.All(k => _inputs[k].Ready), null);
    }

    /// <summary>
    /// A feature set is complete or has failed: every running sweep with trials waiting for features checks them again;
    /// those whose sets are all complete are handed back to their search (which sends them as slots free), those whose
    /// set failed fail with its reason; the rest wait on. Cancelled sweeps check theirs when resumed.
    /// </summary>
    public static async Task<IReadOnlyList<TrainSegment>> FeatureSetSettledAsync(Func<SweepDriver> drivers, ClusterDbContext db, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(drivers);
        ArgumentNullException.ThrowIfNull(db);
        List<Guid> waiting = await db.Trials.AsNoTracking().Where(t => t.Status == TrialStatus.WaitingForFeatures)
            .Join(db.Sweeps.Where(s => s.Status == SweepStatus.Running), t => t.SweepId, s => s.Id, (t, s) => s.Id).Distinct().ToListAsync(ct);
        var sends = new List<TrainSegment>();
        foreach (Guid id in waiting)
        {
            sends.AddRange(await drivers().ReleaseWaitingAsync(id, ct));
        }
        return sends;
    }

    private async Task<IReadOnlyList<TrainSegment>> ReleaseWaitingAsync(Guid sweepId, CancellationToken ct)
    {
        if (!await LoadSweepAsync(sweepId, ct) || _sweep.Status != SweepStatus.Running)
        {
            return [];
        }
        await ReleaseWaitingAsync(ct);
        await EndIfDrainedAsync(ct);
        await SaveAsync(ct);
        return _sends;
    }

    private async Task ReleaseWaitingAsync(CancellationToken ct)
    {
        List<TrialRecord> waiting = await db.Trials.Where(t => t.SweepId == _sweep.Id && t.Status == TrialStatus.WaitingForFeatures).OrderBy(t => t.Number).ToListAsync(ct);
        foreach (TrialRecord trial in waiting)
        {
            TrialRecord tracked = _trials.TryAdd(trial.Number, trial) ? trial : _trials[trial.Number];
            if (tracked.Status != TrialStatus.WaitingForFeatures)
            {
                continue;
            }
            (bool ready, string? failure) = await InputsAsync(tracked, ct);
            if (failure is not null)
            {
                Fail(tracked, failure);
                await ApplyAsync(_method.TrialFailed(tracked.Number), ct);
            }
            else if (ready)
            {
                // Stays waiting until the method gives it a slot (its TrainUntil then dispatches it).
                await ApplyAsync(_method.TrialUnblocked(tracked.Number), ct);
            }
        }
    }

    private async Task RedispatchAsync(bool inFlightLost, CancellationToken ct)
    {
        List<TrialRecord> running = await db.Trials.Where(t => t.SweepId == _sweep.Id && t.Status == TrialStatus.Running).OrderBy(t => t.Number).ToListAsync(ct);
        foreach (TrialRecord trial in running)
        {
            _trials[trial.Number] = trial;
            if (trial.DispatchedSegment is int segment)
            {
                if (inFlightLost && _sweep.Status == SweepStatus.Running && !PastDeadline)
                {
                    _sends.Add(SegmentCommand(trial, segment, resent: true));
                }
            }
            else if (ReachedTarget(trial))
            {
                await ApplyAsync(_method.TrialReported(trial.Number, MetricOf(trial)), ct);
            }
            else
            {
                Dispatch(trial);
            }
        }
        // Sets may have completed while the sweep was cancelled or the service was down.
        await ReleaseWaitingAsync(ct);
    }

    private void Fail(TrialRecord trial, string reason)
    {
        trial.Status = TrialStatus.Failed;
        trial.FailureReason = reason;
        trial.CompletedAt = Now;
        logger.LogWarning("Trial {Trial} (#{Number}) failed: {Reason}", trial.Id, trial.Number, reason);
    }

    // ---- the end of a sweep ----

    private bool PastDeadline => _sweep.Deadline is DateTime deadline && Now >= deadline;

    /// <summary>Past the wall-time budget, the sweep ends as soon as nothing is in flight: trials keep what they trained.</summary>
    private async Task EndIfDrainedAsync(CancellationToken ct)
    {
        if (_sweep.Status != SweepStatus.Running || !PastDeadline)
        {
            return;
        }
        if (!(await TrialStatesAsync(ct)).Any(t => t.InFlight))
        {
            await FinishAsync($"wall-time budget reached at {_sweep.Deadline:u}", ct);
        }
    }

    private async Task FinishAsync(string? stopReason, CancellationToken ct)
    {
        if (_sweep.Status is SweepStatus.Completed or SweepStatus.Failed)
        {
            return;
        }
        DateTime now = Now;
        List<TrialRecord> open = await db.Trials.Where(t => t.SweepId == _sweep.Id && (t.Status == TrialStatus.Pending || t.Status == TrialStatus.Running || t.Status == TrialStatus.WaitingForFeatures)).ToListAsync(ct);
        foreach (TrialRecord trial in open)
        {
            TrialRecord tracked = _trials.GetValueOrDefault(trial.Number, trial);
            if (tracked.Status is TrialStatus.Completed or TrialStatus.Failed or TrialStatus.Stopped)
            {
                continue;
            }
            // Never started (the budget ran out first) or not promoted: stopped, with what it trained kept.
            tracked.Status = TrialStatus.Stopped;
            tracked.CompletedAt = now;
            tracked.Progress = null;
            tracked.FailureReason ??= stopReason is null ? null : $"not trained further: {stopReason}";
            if (tracked.BestSegment is int best)
            {
                _retain.Add((tracked, [best]));
            }
        }
        List<TrialStatus> statuses = [.. (await TrialStatesAsync(ct)).Select(t => t.Status)];
        // A sweep whose every trial failed has failed; one bad trial among good ones never fails the sweep.
        _sweep.Status = statuses.Count > 0 && statuses.All(s => s == TrialStatus.Failed) ? SweepStatus.Failed : SweepStatus.Completed;
        _sweep.StopReason = stopReason;
        _sweep.CompletedAt = now;
        logger.LogInformation("Sweep {Sweep} ({Name}) {Status}{Reason}", _sweep.Id, _sweep.Name, _sweep.Status, stopReason is null ? "" : $": {stopReason}");
    }

    /// <summary>Every trial's status and whether a segment is in flight, as they will be saved (tracked changes included).</summary>
    private async Task<List<(TrialStatus Status, bool InFlight)>> TrialStatesAsync(CancellationToken ct)
    {
        var saved = (await db.Trials.AsNoTracking().Where(t => t.SweepId == _sweep.Id).Select(t => new { t.Id, t.Status, InFlight = t.DispatchedSegment != null }).ToListAsync(ct))
            .ToDictionary(t => t.Id, t => (t.Status, t.InFlight));
        foreach (TrialRecord trial in db.ChangeTracker.Entries<TrialRecord>().Select(e => e.Entity).Where(t => t.SweepId == _sweep.Id))
        {
            saved[trial.Id] = (trial.Status, trial.DispatchedSegment is not null);
        }
        return [.. saved.Values];
    }

    private async Task SaveAsync(CancellationToken ct)
    {
        _sweep.SearchState = _method.Snapshot();
        await db.SaveChangesAsync(ct);
        // Checkpoint files are removed only once the rows that no longer name them are saved.
        var checkpoints = new CheckpointStore(store);
        foreach ((TrialRecord trial, HashSet<int> retained) in _retain)
        {
            // A trial that has ended keeps its best checkpoint only.
            bool ended = trial.Status is TrialStatus.Completed or TrialStatus.Stopped or TrialStatus.Failed;
            HashSet<int> keep = ended && trial.BestSegment is int best ? [best] : retained;
            (string sweepId, string trialId) = (_sweep.Id.ToString(), trial.Id.ToString());
            int[] pruned = [.. checkpoints.Segments(sweepId, trialId).Where(s => !keep.Contains(s))];
            if (pruned.Length == 0)
            {
                continue;
            }
            // The segments' rows stop naming the files before the files go: a crash in between leaves an orphan file
            // (removed next time), never a row that points at a missing file.
            await db.Segments.Where(s => s.TrialId == trial.Id && pruned.Contains(s.Index) && s.CheckpointPath != null)
                .ExecuteUpdateAsync(u => u.SetProperty(s => s.CheckpointPath, (string?)null).SetProperty(s => s.Sha256, (string?)null), ct);
            long freed = checkpoints.Delete(sweepId, trialId, pruned);
            if (freed > 0)
            {
                logger.LogDebug("Trial {Trial}: kept checkpoints {Kept}, freed {Freed} bytes", trial.Id, string.Join(",", keep), freed);
            }
        }
        _retain.Clear();
    }
}
