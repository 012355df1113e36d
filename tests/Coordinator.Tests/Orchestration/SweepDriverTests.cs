using System.Text.Json;
using Cluster.Contracts.Training;
using Cluster.Coordinator.Orchestration;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Files;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging.Abstractions;
using Shouldly;

namespace Cluster.Coordinator.Tests.Orchestration;

/// <summary>
/// The scheduler's decisions on a real SQLite file, driven by events as the service's consumer drives it: a grid's
/// parallelism and segments, ASHA's promotions on a synthetic metric stream, duplicate, late and reordered events,
/// failures and retries, cancel and resume, recovery after a restart, two sweeps at once, and the wall-time budget.
/// Each test has its own database and storage folder.
/// </summary>
public sealed class SweepDriverTests : IAsyncLifetime
{
    private readonly string _folder = Directory.CreateTempSubdirectory("sweep-driver-tests-").FullName;
    private readonly ManualClock _clock = new(new DateTimeOffset(2026, 12, 2, 12, 0, 0, TimeSpan.Zero));
    private ClusterDbContextFactory _database = null!;

    public async Task InitializeAsync()
    {
        _database = new ClusterDbContextFactory(DatabaseProvider.Sqlite, $"Data Source={Path.Combine(_folder, "test.db")}");
        await _database.MigrateAsync(CancellationToken.None);
    }

    public Task DisposeAsync()
    {
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        Directory.Delete(_folder, recursive: true);
        return Task.CompletedTask;
    }

    // ---- driving the scheduler as its consumer does: one event, one context, one save ----

    private async Task<IReadOnlyList<TrainSegment>> Drive(Func<SweepDriver, Task<IReadOnlyList<TrainSegment>>> handle)
    {
        await using ClusterDbContext db = _database.CreateDbContext();
        return await handle(new SweepDriver(db, new FileStore(Path.Combine(_folder, "storage")), NullLogger.Instance, _clock));
    }

    private Task<IReadOnlyList<TrainSegment>> Submit(SubmitSweep sweep) => Drive(d => d.SubmitAsync(sweep, CancellationToken.None));

    private Task<IReadOnlyList<TrainSegment>> Complete(TrainSegment segment, double accuracy, bool stoppedEarly = false) =>
        Drive(d => d.SegmentCompletedAsync(Completed(segment, accuracy, stoppedEarly), CancellationToken.None));

    private static SegmentCompleted Completed(TrainSegment segment, double accuracy, bool stoppedEarly = false) => new()
    {
        SweepId = segment.SweepId, TrialId = segment.TrialId, Segment = segment.Segment, WorkerId = "worker-a", Epoch = segment.EpochTo - 1,
        ValidationAccuracy = accuracy, ValidationLoss = 1 - accuracy, TestAccuracy = segment.IsLast ? accuracy - 0.01 : null, StoppedEarly = stoppedEarly,
        Checkpoint = $"checkpoints/{segment.SweepId}/{segment.TrialId}/segment-{segment.Segment:D4}.safetensors", Seconds = 1.5,
    };

    private Task<IReadOnlyList<TrainSegment>> Fail(TrainSegment segment, bool retriable) => Drive(d => d.SegmentFailedAsync(new SegmentFailed
    {
        SweepId = segment.SweepId, TrialId = segment.TrialId, Segment = segment.Segment, WorkerId = "worker-a", Reason = "out of memory", Retriable = retriable,
    }, CancellationToken.None));

    private async Task<SweepRecord> Sweep(Guid id)
    {
        await using ClusterDbContext db = _database.CreateDbContext();
        return await db.Sweeps.AsNoTracking().SingleAsync(s => s.Id == id);
    }

    private async Task<List<TrialRecord>> Trials(Guid sweepId)
    {
        await using ClusterDbContext db = _database.CreateDbContext();
        return await db.Trials.AsNoTracking().Where(t => t.SweepId == sweepId).OrderBy(t => t.Number).ToListAsync();
    }

    private static SubmitSweep Sweep(int configurations, SweepSearch? search, int epochs = 3, int segmentEpochs = 2, string strategy = "fine-tune-all") =>
        new()
        {
            SweepId = Guid.NewGuid(), Name = "test", SpecText = "name: test", SpecHash = "0",
            Trials = [.. Enumerable.Range(0, configurations).Select(n => new PlannedTrial
            {
                TrialId = Guid.NewGuid(), Number = n, SegmentEpochs = segmentEpochs, Params = JsonSerializer.Serialize(new { lr = 0.001 * (n + 1) }),
                Settings = new TrialSettings
                {
                    Model = "resnet18", Weights = "random", WeightsHash = "random:1", InputSize = 32, Strategy = strategy, Lr = 0.001 * (n + 1),
                    Optimizer = "sgd", Epochs = epochs, BatchSize = 8, Head = strategy == "feature-extractor" ? "logistic" : null,
                },
                Data = new TrialData { TrainDatasetId = "train", ClassNames = ["a", "b"] },
            })],
            Search = search,
        };

    private static SweepSearch Grid(int parallelism) => new() { Method = "grid", Parallelism = parallelism };

    private static int NumberOf(SubmitSweep sweep, TrainSegment segment) => sweep.Trials.Single(t => t.TrialId == segment.TrialId).Number;

    // ---- grid ----

    [Fact]
    public async Task A_grid_trains_its_parallelism_at_a_time_in_bounded_segments_and_completes()
    {
        SubmitSweep sweep = Sweep(configurations: 3, Grid(parallelism: 2), epochs: 3, segmentEpochs: 2);

        IReadOnlyList<TrainSegment> first = await Submit(sweep);

        first.Select(s => NumberOf(sweep, s)).ShouldBe([0, 1]);
        // First sends: the worker need not ask whether they are recorded already.
        first.ShouldAllBe(s => s.Segment == 0 && s.EpochFrom == 0 && s.EpochTo == 2 && !s.IsLast && !s.Resent);
        (await Trials(sweep.SweepId)).Select(t => t.Status).ShouldBe([TrialStatus.Running, TrialStatus.Running, TrialStatus.Pending]);

        IReadOnlyList<TrainSegment> next = await Complete(first[0], 0.6);
        TrainSegment second = next.ShouldHaveSingleItem();
        (second.Segment, second.EpochFrom, second.EpochTo, second.IsLast, second.Resent).ShouldBe((1, 2, 3, true, false));

        // Trial 0 ends: the grid's third configuration starts in its place.
        TrainSegment third = (await Complete(second, 0.7)).ShouldHaveSingleItem();
        NumberOf(sweep, third).ShouldBe(2);
        TrainSegment trial1 = (await Complete(first[1], 0.5)).ShouldHaveSingleItem();
        (await Complete(trial1, 0.55)).ShouldBeEmpty();
        TrainSegment trial2 = (await Complete(third, 0.8)).ShouldHaveSingleItem();
        (await Sweep(sweep.SweepId)).Status.ShouldBe(SweepStatus.Running);
        (await Complete(trial2, 0.9)).ShouldBeEmpty();

        SweepRecord done = await Sweep(sweep.SweepId);
        done.Status.ShouldBe(SweepStatus.Completed);
        List<TrialRecord> trials = await Trials(sweep.SweepId);
        trials.ShouldAllBe(t => t.Status == TrialStatus.Completed && t.Epoch == 2 && t.DispatchedSegment == null && t.CompletedSegments == 2);
        trials.Select(t => t.BestMetric).ShouldBe([0.7, 0.55, 0.9]);
        trials.Select(t => t.TestAccuracy!.Value).ShouldBe([0.69, 0.54, 0.89], tolerance: 1e-12);
        trials.Select(t => t.Seconds).ShouldBe([3.0, 3.0, 3.0]);
    }

    [Fact]
    public async Task A_duplicate_late_or_reordered_event_changes_nothing()
    {
        SubmitSweep sweep = Sweep(configurations: 2, Grid(parallelism: 1), epochs: 4, segmentEpochs: 2);
        TrainSegment segment0 = (await Submit(sweep)).ShouldHaveSingleItem();
        TrainSegment segment1 = (await Complete(segment0, 0.6)).ShouldHaveSingleItem();
        string before = JsonSerializer.Serialize(new { sweep = await Sweep(sweep.SweepId), trials = await Trials(sweep.SweepId) });

        // The same completion again (a redelivery), a completion of a segment not yet sent (reordered: 2 before 1),
        // a failure of the finished segment 0 (late), and events about a trial no sweep has.
        (await Complete(segment0, 0.99)).ShouldBeEmpty();
        (await Complete(segment1 with { Segment = 2, EpochFrom = 4, EpochTo = 6 }, 0.99)).ShouldBeEmpty();
        (await Fail(segment0, retriable: false)).ShouldBeEmpty();
        (await Complete(segment1 with { TrialId = Guid.NewGuid() }, 0.99)).ShouldBeEmpty();
        (await Submit(sweep)).ShouldBeEmpty();

        string after = JsonSerializer.Serialize(new { sweep = await Sweep(sweep.SweepId), trials = await Trials(sweep.SweepId) });
        after.ShouldBe(before);
        // The awaited event still moves the trial on.
        (await Complete(segment1, 0.7)).ShouldHaveSingleItem().Segment.ShouldBe(0);
    }

    // ---- ASHA on a synthetic metric stream ----

    [Fact]
    public async Task Asha_trains_the_best_configuration_to_the_top_rung_and_stops_the_rest_early()
    {
        // Nine configurations, rungs at 1, 3 and 9 epochs, three trials at a time; configuration n's accuracy is
        // quality[n]/10 at every epoch, so configuration 2 is the best and 3 and 1 the worst.
        int[] quality = [5, 1, 8, 0, 3, 7, 2, 6, 4];
        var asha = new SweepSearch { Method = "asha", Parallelism = 3, MinEpochs = 1, MaxEpochs = 9, Reduction = 3 };
        SubmitSweep sweep = Sweep(configurations: 9, asha, epochs: 9, segmentEpochs: 4);
        var queue = new Queue<TrainSegment>(await Submit(sweep));
        queue.Count.ShouldBe(3);
        queue.ShouldAllBe(s => s.EpochFrom == 0 && s.EpochTo == 1);
        while (queue.TryDequeue(out TrainSegment? segment))
        {
            int n = NumberOf(sweep, segment);
            foreach (TrainSegment next in await Complete(segment, quality[n] / 10.0))
            {
                // Segments end on rungs (1, 3, 9) and are at most 4 epochs long.
                next.EpochTo.ShouldBeOneOf(1, 3, 7, 9);
                (next.EpochTo - next.EpochFrom).ShouldBeLessThanOrEqualTo(4);
                queue.Enqueue(next);
            }
        }

        (await Sweep(sweep.SweepId)).Status.ShouldBe(SweepStatus.Completed);
        List<TrialRecord> trials = await Trials(sweep.SweepId);
        string trace = string.Join(", ", trials.Select(t => $"{t.Number}: {t.Epoch + 1} epochs {t.Status}"));
        (trials[2].Status, trials[2].Epoch).ShouldBe((TrialStatus.Completed, 8), trace);
        trials[3].Epoch.ShouldBe(0, trace);
        trials[1].Epoch.ShouldBe(0, trace);
        trials.Where(t => t.Epoch < 8).ShouldAllBe(t => t.Status == TrialStatus.Stopped, trace);
        // Far less than the grid's 81 epochs: stopped trials are never trained further.
        trials.Sum(t => t.Epoch!.Value + 1).ShouldBeLessThanOrEqualTo(81 * 4 / 10, trace);
    }

    // ---- failures ----

    [Fact]
    public async Task A_retriable_failure_is_sent_again_until_its_attempts_are_spent_and_the_sweep_goes_on()
    {
        SubmitSweep sweep = Sweep(configurations: 2, Grid(parallelism: 1), epochs: 2) with { MaxAttempts = 3 };
        TrainSegment segment = (await Submit(sweep)).ShouldHaveSingleItem();

        TrainSegment again = (await Fail(segment, retriable: true)).ShouldHaveSingleItem();
        // The same segment, marked as possibly sent before, so the worker checks for a record first.
        again.ShouldBe(segment with { Settings = again.Settings, Data = again.Data, Resent = true });
        TrainSegment third = (await Fail(again, retriable: true)).ShouldHaveSingleItem();
        TrainSegment nextTrial = (await Fail(third, retriable: true)).ShouldHaveSingleItem();

        NumberOf(sweep, nextTrial).ShouldBe(1);
        TrialRecord failed = (await Trials(sweep.SweepId))[0];
        failed.Status.ShouldBe(TrialStatus.Failed);
        failed.Attempts.ShouldBe(3);
        failed.FailureReason.ShouldBe("segment 0: out of memory (after 3 attempts)");
        (await Complete(nextTrial, 0.8)).ShouldBeEmpty();
        (await Sweep(sweep.SweepId)).Status.ShouldBe(SweepStatus.Completed);
    }

    [Fact]
    public async Task A_failure_the_worker_explains_fails_the_trial_at_once_and_a_sweep_of_only_failures_fails()
    {
        SubmitSweep sweep = Sweep(configurations: 1, Grid(parallelism: 1), epochs: 2);
        TrainSegment segment = (await Submit(sweep)).ShouldHaveSingleItem();

        (await Fail(segment, retriable: false)).ShouldBeEmpty();

        (await Trials(sweep.SweepId)).Single().Attempts.ShouldBe(1);
        (await Sweep(sweep.SweepId)).Status.ShouldBe(SweepStatus.Failed);
    }

    // ---- cancel, resume, recovery ----

    [Fact]
    public async Task Cancel_stops_dispatching_records_what_was_in_flight_and_resume_continues_from_there()
    {
        SubmitSweep sweep = Sweep(configurations: 3, Grid(parallelism: 2), epochs: 4, segmentEpochs: 2);
        IReadOnlyList<TrainSegment> first = await Submit(sweep);

        (await Drive(d => d.CancelAsync(sweep.SweepId, CancellationToken.None))).ShouldBeEmpty();
        (await Sweep(sweep.SweepId)).Status.ShouldBe(SweepStatus.Cancelled);
        // In flight when cancelled: recorded, but nothing more is sent.
        (await Complete(first[0], 0.6)).ShouldBeEmpty();
        (await Complete(first[1], 0.5)).ShouldBeEmpty();
        List<TrialRecord> paused = await Trials(sweep.SweepId);
        paused.Take(2).ShouldAllBe(t => t.Epoch == 1 && t.DispatchedSegment == null && t.Status == TrialStatus.Running);

        IReadOnlyList<TrainSegment> resumed = await Drive(d => d.ResumeAsync(sweep.SweepId, inFlightLost: false, CancellationToken.None));

        resumed.Select(s => (NumberOf(sweep, s), s.Segment, s.EpochFrom, s.EpochTo)).ShouldBe([(0, 1, 2, 4), (1, 1, 2, 4)]);
        (await Sweep(sweep.SweepId)).Status.ShouldBe(SweepStatus.Running);
        // Resuming a running sweep with its segments in flight sends nothing twice.
        (await Drive(d => d.ResumeAsync(sweep.SweepId, inFlightLost: false, CancellationToken.None))).ShouldBeEmpty();
    }

    [Fact]
    public async Task A_restarted_coordinator_sends_again_what_was_dispatched_and_ignores_the_duplicate_report()
    {
        SubmitSweep sweep = Sweep(configurations: 2, Grid(parallelism: 2), epochs: 2, segmentEpochs: 2);
        IReadOnlyList<TrainSegment> sent = await Submit(sweep);
        (await Complete(sent[0], 0.6)).ShouldBeEmpty();

        IReadOnlyList<TrainSegment> recovered;
        await using (ClusterDbContext db = _database.CreateDbContext())
        {
            var contexts = new List<ClusterDbContext>();
            recovered = await SweepDriver.RecoverAllAsync(() =>
            {
                ClusterDbContext own = _database.CreateDbContext();
                contexts.Add(own);
                return new SweepDriver(own, new FileStore(Path.Combine(_folder, "storage")), NullLogger.Instance, _clock);
            }, db, CancellationToken.None);
            contexts.ForEach(c => c.Dispose());
        }

        // Only trial 1's segment was in flight; both copies of it may now be trained, and the second report is ignored.
        TrainSegment again = recovered.ShouldHaveSingleItem();
        again.TrialId.ShouldBe(sent[1].TrialId);
        (again.Segment, again.EpochFrom, again.EpochTo, again.Resent).ShouldBe((sent[1].Segment, sent[1].EpochFrom, sent[1].EpochTo, true));
        (await Complete(sent[1], 0.7)).ShouldBeEmpty();
        (await Complete(again, 0.7)).ShouldBeEmpty();
        (await Sweep(sweep.SweepId)).Status.ShouldBe(SweepStatus.Completed);
        (await Trials(sweep.SweepId)).Select(t => t.Seconds).ShouldBe([1.5, 1.5]);
    }

    [Fact]
    public async Task Two_sweeps_at_once_each_keep_their_parallelism_and_both_complete()
    {
        SubmitSweep a = Sweep(configurations: 4, Grid(parallelism: 2), epochs: 1);
        SubmitSweep b = Sweep(configurations: 3, Grid(parallelism: 1), epochs: 1);
        var queue = new Queue<TrainSegment>([.. await Submit(a), .. await Submit(b)]);
        queue.Count(s => s.SweepId == a.SweepId).ShouldBe(2);
        queue.Count(s => s.SweepId == b.SweepId).ShouldBe(1);
        var order = new List<Guid>();
        while (queue.TryDequeue(out TrainSegment? segment))
        {
            order.Add(segment.SweepId);
            foreach (TrainSegment next in await Complete(segment, 0.5))
            {
                queue.Enqueue(next);
            }
        }

        (await Sweep(a.SweepId)).Status.ShouldBe(SweepStatus.Completed);
        (await Sweep(b.SweepId)).Status.ShouldBe(SweepStatus.Completed);
        // Neither waited for the other: b's trials ran while a's did (the shared queue serves both in turn).
        order.IndexOf(b.SweepId).ShouldBeLessThan(order.LastIndexOf(a.SweepId));
        order.LastIndexOf(b.SweepId).ShouldBeGreaterThan(order.IndexOf(a.SweepId));
    }

    // ---- budgets and trials that cannot train further ----

    [Fact]
    public async Task Past_the_wall_time_budget_nothing_more_is_sent_and_the_sweep_ends_when_in_flight_work_reports()
    {
        SubmitSweep sweep = Sweep(configurations: 3, Grid(parallelism: 2), epochs: 4, segmentEpochs: 2) with { WallTimeSeconds = 600 };
        IReadOnlyList<TrainSegment> first = await Submit(sweep);

        _clock.Advance(TimeSpan.FromMinutes(11));
        (await Complete(first[0], 0.6)).ShouldBeEmpty();
        (await Sweep(sweep.SweepId)).Status.ShouldBe(SweepStatus.Running, "trial 1's segment is still in flight");
        (await Complete(first[1], 0.5)).ShouldBeEmpty();

        SweepRecord ended = await Sweep(sweep.SweepId);
        ended.Status.ShouldBe(SweepStatus.Completed);
        ended.StopReason!.ShouldStartWith("wall-time budget reached");
        List<TrialRecord> trials = await Trials(sweep.SweepId);
        trials.ShouldAllBe(t => t.Status == TrialStatus.Stopped);
        trials.Select(t => t.Epoch).ShouldBe([1, 1, null]);
    }

    [Fact]
    public async Task A_trial_that_stopped_early_or_trains_a_head_in_one_go_reports_without_more_segments()
    {
        var asha = new SweepSearch { Method = "asha", Parallelism = 3, MinEpochs = 1, MaxEpochs = 9, Reduction = 3 };
        SubmitSweep heads = Sweep(configurations: 3, asha, epochs: 9, strategy: "feature-extractor");
        IReadOnlyList<TrainSegment> sent = await Submit(heads);
        sent.ShouldAllBe(s => s.EpochFrom == 0 && s.EpochTo == 9 && s.IsLast, "a head trains all its epochs in one segment");

        foreach (TrainSegment segment in sent)
        {
            (await Complete(segment, 0.5 + NumberOf(heads, segment) / 10.0)).ShouldBeEmpty();
        }

        (await Sweep(heads.SweepId)).Status.ShouldBe(SweepStatus.Completed);
        (await Trials(heads.SweepId)).ShouldAllBe(t => t.Status == TrialStatus.Completed && t.CompletedSegments == 1);

        SubmitSweep early = Sweep(configurations: 1, Grid(parallelism: 1), epochs: 6, segmentEpochs: 2);
        TrainSegment only = (await Submit(early)).ShouldHaveSingleItem();
        (await Complete(only, 0.8, stoppedEarly: true)).ShouldBeEmpty();
        TrialRecord stopped = (await Trials(early.SweepId)).Single();
        (stopped.Status, stopped.Epoch, stopped.StoppedEarly).ShouldBe((TrialStatus.Completed, 1, true));
    }

    // ---- the order of work: trials wait for their frozen prefix, others train meanwhile ----

    /// <summary>The sweep's trials, with trial n training on the feature set <paramref name="keys"/>[n] (null: none).</summary>
    private static SubmitSweep WithFeatures(SubmitSweep sweep, params string?[] keys) => sweep with
    {
        Trials = [.. sweep.Trials.Select(t => keys[t.Number] is string key
            ? t with { Data = t.Data with { CutoffFeatures = new Dictionary<string, string> { ["train"] = key } }, PrefixKey = key }
            : t)],
    };

    private async Task RecordSet(string key, FeatureSetStatus status, string? failedShard = null)
    {
        await using ClusterDbContext db = _database.CreateDbContext();
        FeatureSetRecord? set = await db.FeatureSets.SingleOrDefaultAsync(f => f.Key == key);
        if (set is null)
        {
            db.FeatureSets.Add(set = new FeatureSetRecord
            {
                Key = key, Model = "resnet18", WeightsHash = "random:1", Layer = "layer3", Pooling = "none", Preprocessing = "imagenet", DatasetId = "train",
                Dtype = "fp32", Shape = "256x2x2", ShardCount = 2, ShardSize = 10, ImageCount = 20, CreatedAt = _clock.GetUtcNow().UtcDateTime,
            });
        }
        set.Status = status;
        if (failedShard is not null)
        {
            db.FeatureShards.Add(new FeatureShardRecord
            {
                FeatureSetKey = key, Index = 1, Status = FeatureShardStatus.Failed, FailureReason = failedShard, Path = $"features/{key}/shard-0001.safetensors",
                Sha256 = "", RowStart = 10, RowCount = 10, CreatedAt = _clock.GetUtcNow().UtcDateTime,
            });
        }
        await db.SaveChangesAsync();
    }

    /// <summary>A FeatureSetSettled event, handled as the consumer does: one driver and context a sweep.</summary>
    private async Task<IReadOnlyList<TrainSegment>> Settled()
    {
        await using ClusterDbContext db = _database.CreateDbContext();
        var contexts = new List<ClusterDbContext>();
        try
        {
            return await SweepDriver.FeatureSetSettledAsync(() =>
            {
                ClusterDbContext own = _database.CreateDbContext();
                contexts.Add(own);
                return new SweepDriver(own, new FileStore(Path.Combine(_folder, "storage")), NullLogger.Instance, _clock);
            }, db, CancellationToken.None);
        }
        finally
        {
            contexts.ForEach(c => c.Dispose());
        }
    }

    [Fact]
    public async Task Trials_whose_prefix_is_ready_train_while_others_wait_for_theirs_and_then_go_first()
    {
        // Trials 0 and 1 train on a set still extracting; trial 2 on a cached one; trial 3 on none (fine-tune-all).
        await RecordSet("layer3-extracting", FeatureSetStatus.Extracting);
        await RecordSet("layer4-cached", FeatureSetStatus.Complete);
        SubmitSweep sweep = WithFeatures(Sweep(configurations: 5, Grid(parallelism: 2), epochs: 1, segmentEpochs: 1),
            "layer3-extracting", "layer3-extracting", "layer4-cached", null, "layer3-extracting");

        IReadOnlyList<TrainSegment> first = await Submit(sweep);

        // No slot is held by a trial that cannot start: the two ready ones train now, and trial 4 is not started yet.
        first.Select(s => NumberOf(sweep, s)).ShouldBe([2, 3]);
        (await Trials(sweep.SweepId)).Select(t => t.Status).ShouldBe(
            [TrialStatus.WaitingForFeatures, TrialStatus.WaitingForFeatures, TrialStatus.Running, TrialStatus.Running, TrialStatus.Pending]);
        (await Settled()).ShouldBeEmpty("the set is still extracting: nothing changes");

        await RecordSet("layer3-extracting", FeatureSetStatus.Complete);
        (await Settled()).ShouldBeEmpty("both slots are busy: the ready trials wait for one");
        (await Settled()).ShouldBeEmpty("a repeated event changes nothing");

        // As slots free, the trials that waited go first, in order, before anything else.
        TrainSegment next = (await Complete(first[0], 0.6)).ShouldHaveSingleItem();
        NumberOf(sweep, next).ShouldBe(0);
        TrainSegment after = (await Complete(first[1], 0.7)).ShouldHaveSingleItem();
        NumberOf(sweep, after).ShouldBe(1);
        TrainSegment last = (await Complete(next, 0.8)).ShouldHaveSingleItem();
        NumberOf(sweep, last).ShouldBe(4);
        (await Complete(after, 0.5)).ShouldBeEmpty();
        (await Complete(last, 0.5)).ShouldBeEmpty();

        (await Sweep(sweep.SweepId)).Status.ShouldBe(SweepStatus.Completed);
        (await Trials(sweep.SweepId)).ShouldAllBe(t => t.Status == TrialStatus.Completed && t.CompletedSegments == 1);
    }

    [Fact]
    public async Task A_set_that_fails_fails_the_trials_waiting_on_it_with_its_reason_and_the_sweep_goes_on()
    {
        await RecordSet("bad-weights", FeatureSetStatus.Extracting);
        SubmitSweep sweep = WithFeatures(Sweep(configurations: 3, Grid(parallelism: 1), epochs: 1, segmentEpochs: 1), "bad-weights", "bad-weights", null);

        TrainSegment only = (await Submit(sweep)).ShouldHaveSingleItem();
        NumberOf(sweep, only).ShouldBe(2);

        await RecordSet("bad-weights", FeatureSetStatus.Extracting, failedShard: "layer 'layer3' not found");
        (await Settled()).ShouldBeEmpty();
        List<TrialRecord> trials = await Trials(sweep.SweepId);
        trials.Take(2).ShouldAllBe(t => t.Status == TrialStatus.Failed && t.FailureReason == "shard 1 of feature set bad-weights failed: layer 'layer3' not found");
        (await Sweep(sweep.SweepId)).Status.ShouldBe(SweepStatus.Running);

        (await Complete(only, 0.9)).ShouldBeEmpty();
        (await Sweep(sweep.SweepId)).Status.ShouldBe(SweepStatus.Completed, "one bad set never fails the sweep");
    }

    [Fact]
    public async Task Asha_gives_a_blocked_trials_slot_to_a_ready_one_and_resumes_it_at_its_rung()
    {
        await RecordSet("slow", FeatureSetStatus.Extracting);
        var asha = new SweepSearch { Method = "asha", Parallelism = 1, MinEpochs = 1, MaxEpochs = 3, Reduction = 3 };
        SubmitSweep sweep = WithFeatures(Sweep(configurations: 3, asha, epochs: 3, segmentEpochs: 1), "slow", null, null);

        TrainSegment first = (await Submit(sweep)).ShouldHaveSingleItem();
        NumberOf(sweep, first).ShouldBe(1);
        await RecordSet("slow", FeatureSetStatus.Complete);
        (await Settled()).ShouldBeEmpty();

        TrainSegment resumed = (await Complete(first, 0.5)).ShouldHaveSingleItem();
        (NumberOf(sweep, resumed), resumed.EpochFrom, resumed.EpochTo).ShouldBe((0, 0, 1), "trial 0 trains to the bottom rung it was created for");
        var queue = new Queue<TrainSegment>([resumed]);
        while (queue.TryDequeue(out TrainSegment? segment))
        {
            foreach (TrainSegment next in await Complete(segment, 0.4 + NumberOf(sweep, segment) / 10.0))
            {
                queue.Enqueue(next);
            }
        }
        (await Sweep(sweep.SweepId)).Status.ShouldBe(SweepStatus.Completed);
        (await Trials(sweep.SweepId)).ShouldAllBe(t => t.Status == TrialStatus.Completed || t.Status == TrialStatus.Stopped);
    }

    [Fact]
    public async Task A_cancelled_sweep_keeps_its_waiting_trials_and_resume_sends_those_whose_set_completed_meanwhile()
    {
        await RecordSet("late", FeatureSetStatus.Extracting);
        SubmitSweep sweep = WithFeatures(Sweep(configurations: 2, Grid(parallelism: 2), epochs: 1, segmentEpochs: 1), "late", null);
        TrainSegment only = (await Submit(sweep)).ShouldHaveSingleItem();
        (await Drive(d => d.CancelAsync(sweep.SweepId, CancellationToken.None))).ShouldBeEmpty();

        await RecordSet("late", FeatureSetStatus.Complete);
        (await Settled()).ShouldBeEmpty("a cancelled sweep sends nothing");
        (await Trials(sweep.SweepId))[0].Status.ShouldBe(TrialStatus.WaitingForFeatures);

        TrainSegment sent = (await Drive(d => d.ResumeAsync(sweep.SweepId, inFlightLost: false, CancellationToken.None))).ShouldHaveSingleItem();
        NumberOf(sweep, sent).ShouldBe(0);
        (await Complete(only, 0.5)).ShouldBeEmpty();
        (await Complete(sent, 0.6)).ShouldBeEmpty();
        (await Sweep(sweep.SweepId)).Status.ShouldBe(SweepStatus.Completed);
    }

    /// <summary>A clock the test moves (the wall-time budget without waiting).</summary>
    private sealed class ManualClock(DateTimeOffset start) : TimeProvider
    {
        private DateTimeOffset _now = start;

        public override DateTimeOffset GetUtcNow() => _now;

        public void Advance(TimeSpan by) => _now += by;
    }
}
