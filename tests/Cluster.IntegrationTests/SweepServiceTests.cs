using System.Globalization;
using System.Text.Json;
using Cluster.Contracts;
using Cluster.IntegrationTests.Support;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Files;
using Cluster.TestSupport.Training;
using Microsoft.EntityFrameworkCore;
using Shouldly;

namespace Cluster.IntegrationTests;

/// <summary>
/// Sweeps in the coordinator service on real processes (RabbitMQ, PostgreSQL, `coordinator serve`, two `gpu-worker`s):
/// the service killed with SIGKILL mid-sweep and started again finishes every trial, none lost and none trained twice;
/// two sweeps at once share the workers; cancel stops one sweep's dispatching while the other goes on, and resume
/// continues it to the end; trials on a frozen prefix wait for its extraction in the service while the others train;
/// segments of one prefix go to the worker holding its features, and what was sent to a killed worker moves on to the
/// other.
/// </summary>
public sealed class SweepServiceTests : IAsyncLifetime
{
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(8);
    private IsolatedCluster _cluster = null!;

    public async Task InitializeAsync()
    {
        _cluster = await IsolatedCluster.CreateAsync();
        await _cluster.MigrateAsync(s_deadline);
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    /// <summary>A grid of trials over learning rates (from scratch unless <paramref name="strategy"/> says otherwise), one epoch a segment.</summary>
    private string WriteSpec(string name, string lrs, int parallelism, int epochs, string strategy = "strategy: from-scratch")
    {
        string images = Path.Combine(_cluster.StorageRoot, "..", $"images-{_cluster.Name}");
        if (!Directory.Exists(Path.Combine(images, "train")))
        {
            StripeImages.Write(Path.Combine(images, "train"), perClass: 16);
        }
        string spec = Path.Combine(images, $"{name}.yaml");
        File.WriteAllText(spec, $"""
            name: {name}
            dataset:
              train: train
              validation: 0.25
            model: resnet18
            weights: random
            input_size: 32
            {strategy}
            lr: {lrs}
            optimizer: sgd
            epochs: {epochs}
            batch_size: 8
            segment_epochs: 1
            seed: 9
            parallelism: {parallelism}
            """);
        return spec;
    }

    private Task<Guid> SubmitAsync(string spec) => _cluster.SubmitSweepAsync(spec, s_deadline);

    private async Task<SweepRecord?> SweepAsync(Guid id)
    {
        await using var db = _cluster.Database();
        return await db.Sweeps.AsNoTracking().SingleOrDefaultAsync(s => s.Id == id);
    }

    private Task WaitForStatusAsync(Guid id, SweepStatus status, string what) =>
        Eventually.WaitAsync(async () => (await SweepAsync(id))?.Status == status, s_deadline, what);

    /// <summary>Every trial ended completed, with exactly one segment per epoch and one metric row per epoch and split.
    /// Returns the segments, in the order they started.</summary>
    private async Task<List<SegmentRecord>> ShouldHaveTrainedEachTrialOnceAsync(Guid sweepId, int trials, int epochs)
    {
        await using var db = _cluster.Database();
        List<TrialRecord> recorded = await db.Trials.AsNoTracking().Where(t => t.SweepId == sweepId).ToListAsync();
        recorded.Count.ShouldBe(trials);
        recorded.ShouldAllBe(t => t.Status == TrialStatus.Completed && t.Epoch == epochs - 1 && t.CompletedSegments == epochs && t.DispatchedSegment == null);
        Guid[] ids = [.. recorded.Select(t => t.Id)];
        List<SegmentRecord> segments = await db.Segments.AsNoTracking().Where(s => ids.Contains(s.TrialId)).OrderBy(s => s.StartedAt).ToListAsync();
        segments.GroupBy(s => s.TrialId).ShouldAllBe(g => g.Select(s => s.Index).Order().SequenceEqual(Enumerable.Range(0, epochs)));
        segments.ShouldAllBe(s => s.Status == SegmentStatus.Completed);
        List<EpochMetricRecord> metrics = await db.EpochMetrics.AsNoTracking().Where(m => ids.Contains(m.TrialId)).ToListAsync();
        metrics.Count.ShouldBe(trials * epochs * 2, "train and validation rows for each epoch");
        metrics.GroupBy(m => (m.TrialId, m.Epoch, m.Split)).ShouldAllBe(g => g.Count() == 1);
        return segments;
    }

    /// <summary>Both workers' own queues exist with a consumer: a directed segment has somewhere to go from the start.</summary>
    private async Task WaitForOwnQueuesAsync(params string[] workers)
    {
        foreach (string worker in workers)
        {
            await Eventually.WaitAsync(async () => (await _cluster.QueueAsync(QueueNames.WorkerQueue(worker)))?.Consumers == 1,
                s_deadline, $"worker {worker}'s own queue to have its consumer");
        }
    }

    /// <summary>fine-tune-top at layer3 (its features materialized), one trial at a time: each segment after the first can
    /// go back to the worker holding layer3's features.</summary>
    private string WriteLocalitySpec(string name) =>
        WriteSpec(name, "[0.01, 0.02]", parallelism: 1, epochs: 4, strategy: "strategy: fine-tune-top\ncutoff: layer3");

    private static async Task KillAsync(ClusterProcess process)
    {
        using (var kill = System.Diagnostics.Process.Start("kill", ["-KILL", process.Id.ToString(CultureInfo.InvariantCulture)]))
        {
            await kill.WaitForExitAsync();
        }
        await process.WaitForExitAsync(s_deadline);
    }

    [Fact]
    public async Task A_coordinator_killed_mid_sweep_and_restarted_finishes_every_trial_with_none_lost_or_trained_twice()
    {
        string spec = WriteSpec("restart", "[0.01, 0.02, 0.03]", parallelism: 2, epochs: 3);
        ClusterProcess serve = _cluster.Coordinator("serve", "--cluster");
        _cluster.Worker("--device", "cpu", "--id", "a-" + _cluster.Name);
        _cluster.Worker("--device", "cpu", "--id", "b-" + _cluster.Name);
        Guid sweepId = await SubmitAsync(spec);

        // Some segments recorded, the sweep under way: then the coordinator dies, with events and sends in flight.
        await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            return await db.Trials.AsNoTracking().Where(t => t.SweepId == sweepId).SumAsync(t => t.CompletedSegments) >= 2;
        }, s_deadline, "two segments of the sweep to be recorded");
        await KillAsync(serve);
        _cluster.Coordinator("serve", "--cluster");

        await WaitForStatusAsync(sweepId, SweepStatus.Completed, "the sweep to complete after the restart");
        await ShouldHaveTrainedEachTrialOnceAsync(sweepId, trials: 3, epochs: 3);
        (int code, ClusterProcess results) = await _cluster.RunCoordinatorAsync(s_deadline, "sweep", "results", sweepId.ToString(), "--cluster", "--format", "json");
        code.ShouldBe(0, results.Describe());
        using JsonDocument json = JsonDocument.Parse(results.StandardOutput);
        json.RootElement.GetProperty("trials").EnumerateArray().Count().ShouldBe(3);
    }

    [Fact]
    public async Task Two_sweeps_share_the_workers_and_a_cancelled_one_waits_until_resumed()
    {
        // The first sweep is long (12 one-epoch segments, one at a time), so the cancel lands while it runs.
        string first = WriteSpec("first", "[0.01, 0.02, 0.03]", parallelism: 1, epochs: 4);
        string second = WriteSpec("second", "[0.05, 0.06]", parallelism: 1, epochs: 1);
        _cluster.Coordinator("serve", "--cluster");
        _cluster.Worker("--device", "cpu", "--id", "a-" + _cluster.Name);
        _cluster.Worker("--device", "cpu", "--id", "b-" + _cluster.Name);
        Guid a = await SubmitAsync(first);
        Guid b = await SubmitAsync(second);

        // Cancel the first once it has recorded a segment: what it has in flight finishes, then it sends nothing more.
        await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            return await db.Trials.AsNoTracking().AnyAsync(t => t.SweepId == a && t.CompletedSegments >= 1);
        }, s_deadline, "a segment of the first sweep to be recorded");
        (int code, ClusterProcess cancel) = await _cluster.RunCoordinatorAsync(s_deadline, "sweep", "cancel", a.ToString()[..8], "--cluster");
        code.ShouldBe(0, cancel.Describe());
        (await SweepAsync(a))!.Status.ShouldBe(SweepStatus.Cancelled);

        // The second sweep goes on to the end while the first is paused.
        await WaitForStatusAsync(b, SweepStatus.Completed, "the second sweep to complete while the first is cancelled");
        await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            return !await db.Trials.AsNoTracking().AnyAsync(t => t.SweepId == a && t.DispatchedSegment != null);
        }, s_deadline, "the first sweep's in-flight segments to report");
        await using (var db = _cluster.Database())
        {
            (await db.Trials.AsNoTracking().Where(t => t.SweepId == a).SumAsync(t => t.CompletedSegments)).ShouldBeLessThan(12, "the cancelled sweep stopped short");
            (await SweepAsync(a))!.Status.ShouldBe(SweepStatus.Cancelled);
        }

        (code, ClusterProcess resume) = await _cluster.RunCoordinatorAsync(s_deadline, "sweep", "resume", a.ToString(), "--cluster");
        code.ShouldBe(0, resume.Describe());
        await WaitForStatusAsync(a, SweepStatus.Completed, "the resumed sweep to complete");
        await ShouldHaveTrainedEachTrialOnceAsync(a, trials: 3, epochs: 4);
        await ShouldHaveTrainedEachTrialOnceAsync(b, trials: 2, epochs: 1);
        // Both sweeps' segments ran on both workers' queue: the second's trials started before the first had ended.
        await using (var db = _cluster.Database())
        {
            DateTime firstEnded = (await SweepAsync(a))!.CompletedAt!.Value;
            (await db.Trials.AsNoTracking().Where(t => t.SweepId == b).MinAsync(t => t.StartedAt)).ShouldNotBeNull().ShouldBeLessThan(firstEnded);
        }
    }

    [Fact]
    public async Task Trials_on_a_prefix_wait_in_the_service_until_its_features_are_complete_while_the_others_train()
    {
        // Feature-extractor trials need layer3's features (extracted by the service after submission); from-scratch
        // trials need none, so they are sent at once.
        string spec = WriteSpec("prefix", "[0.01, 0.02]", parallelism: 2, epochs: 1,
            strategy: "strategy: [feature-extractor, from-scratch]\ncutoff: layer3\nhead: logistic");
        _cluster.Coordinator("serve", "--cluster");
        _cluster.Worker("--device", "cpu", "--id", "a-" + _cluster.Name);
        _cluster.Worker("--device", "cpu", "--id", "b-" + _cluster.Name);
        Guid sweepId = await SubmitAsync(spec);

        await WaitForStatusAsync(sweepId, SweepStatus.Completed, "the sweep to complete");
        await using var db = _cluster.Database();
        List<TrialRecord> trials = await db.Trials.AsNoTracking().Where(t => t.SweepId == sweepId).ToListAsync();
        trials.Count.ShouldBe(3, "feature-extractor with logistic ignores lr: one trial, and two from scratch");
        trials.ShouldAllBe(t => t.Status == TrialStatus.Completed && t.DispatchedSegment == null);
        TrialRecord head = trials.Single(t => t.Strategy == "feature-extractor");
        FeatureSetRecord set = await db.FeatureSets.AsNoTracking().SingleAsync(f => f.Key == head.PrefixKey);
        set.Status.ShouldBe(FeatureSetStatus.Complete);
        SegmentRecord headSegment = await db.Segments.AsNoTracking().SingleAsync(s => s.TrialId == head.Id);
        // It was sent only once the service had marked its set complete (the submission did not wait for it).
        headSegment.StartedAt.ShouldNotBeNull().ShouldBeGreaterThanOrEqualTo(set.CompletedAt.ShouldNotBeNull());
        (await db.FeatureShards.AsNoTracking().CountAsync(f => f.FeatureSetKey == set.Key)).ShouldBe(set.ShardCount, "each shard extracted once");
    }

    [Fact]
    public async Task Segments_of_one_prefix_go_to_the_worker_that_holds_its_features()
    {
        string spec = WriteLocalitySpec("locality");
        string a = "a-" + _cluster.Name, b = "b-" + _cluster.Name;
        ClusterProcess serve = _cluster.Coordinator("serve", "--cluster");
        _cluster.Worker("--device", "cpu", "--id", a);
        _cluster.Worker("--device", "cpu", "--id", b);
        await WaitForOwnQueuesAsync(a, b);
        Guid sweepId = await SubmitAsync(spec);

        await WaitForStatusAsync(sweepId, SweepStatus.Completed, "the sweep to complete");
        List<SegmentRecord> segments = await ShouldHaveTrainedEachTrialOnceAsync(sweepId, trials: 2, epochs: 4);
        // The first segment went to the shared queue (no one held layer3's features yet); every later one, of both
        // trials, to the worker that had trained on them and was free. From the shared queue alone, two idle workers
        // take turns (the broker's round robin), so eight segments on one worker is what locality does.
        string holder = segments[0].WorkerId.ShouldNotBeNull();
        segments.Select(s => s.WorkerId).ShouldAllBe(w => w == holder, _cluster.DescribeProcesses());
        serve.Lines.Count(l => l.Contains("which holds its features in memory", StringComparison.Ordinal) && l.Contains(holder, StringComparison.Ordinal))
            .ShouldBe(7, "each segment after the first was sent to the holder's own queue");
    }

    [Fact]
    public async Task What_was_sent_to_a_killed_worker_moves_on_to_the_other_and_no_segment_is_trained_twice()
    {
        string spec = WriteLocalitySpec("killed");
        string a = "a-" + _cluster.Name, b = "b-" + _cluster.Name;
        _cluster.Coordinator("serve", "--cluster");
        var workers = new Dictionary<string, ClusterProcess>
        {
            [a] = _cluster.Worker("--device", "cpu", "--id", a),
            [b] = _cluster.Worker("--device", "cpu", "--id", b),
        };
        await WaitForOwnQueuesAsync(a, b);
        Guid sweepId = await SubmitAsync(spec);

        // The worker of the first recorded segment holds the features: its next segment is already on its way to it.
        string holder = null!;
        await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            holder = (await db.Segments.AsNoTracking().Where(s => s.Status == SegmentStatus.Completed).Select(s => s.WorkerId).FirstOrDefaultAsync())!;
            return holder is not null;
        }, s_deadline, "a segment to be recorded");
        DateTime killedAt = DateTime.UtcNow;
        await KillAsync(workers[holder]);

        await WaitForStatusAsync(sweepId, SweepStatus.Completed, "the sweep to complete");
        List<SegmentRecord> segments = await ShouldHaveTrainedEachTrialOnceAsync(sweepId, trials: 2, epochs: 4);
        string survivor = holder == a ? b : a;
        segments.Where(s => s.StartedAt > killedAt).ShouldNotBeEmpty();
        segments.Where(s => s.StartedAt > killedAt).ShouldAllBe(s => s.WorkerId == survivor, _cluster.DescribeProcesses());
        // Nothing is left behind in the dead worker's queue: it went on to the shared one when its wait ran out. (Waited
        // on: the management API's counts lag the queue by up to a statistics interval, and a copy sent there just
        // before the sweep's end leaves after the directed wait.)
        await Eventually.WaitAsync(async () => ((await _cluster.QueueAsync(QueueNames.WorkerQueue(holder)))?.Ready ?? 0) == 0,
            QueueNames.DirectedWait * 3, "the dead worker's queue to be empty");
    }

    /// <summary>
    /// Item 5 of the chaos issue through real processes: a cached feature set whose shard file was damaged on the volume
    /// (bytes overwritten, its sha256 no longer the recorded one) is extracted again by the worker that reads it, never
    /// used: the next sweep on that prefix completes, the shard's file matches its row again, and the trial's results
    /// equal those of the same trial trained on the undamaged features.
    /// </summary>
    [Fact]
    public async Task A_damaged_cached_feature_shard_is_extracted_again_by_the_next_sweep_and_its_results_stand()
    {
        string spec = WriteSpec("repair", "[0.01]", parallelism: 1, epochs: 1, strategy: "strategy: fine-tune-top\ncutoff: layer3");
        _cluster.Coordinator("serve", "--cluster");
        ClusterProcess first = _cluster.Worker("--device", "cpu", "--id", "first-" + _cluster.Name);
        Guid before = await SubmitAsync(spec);
        await WaitForStatusAsync(before, SweepStatus.Completed, "the first sweep to complete");
        // A new worker process, so that nothing of the set is resident in memory and training reads the files.
        await KillAsync(first);

        await using var db = _cluster.Database();
        TrialRecord trained = await db.Trials.AsNoTracking().SingleAsync(t => t.SweepId == before);
        // fine-tune-top's first epoch trains the new top on the pooled tap of the layer3 pass (layer3's own set is read
        // only once the suffix trains): the pooled set is the one the next sweep's trial reads.
        trained.PrefixKey.ShouldNotBeNull().ShouldStartWith("resnet18.layer3.");
        string key = await db.FeatureSets.AsNoTracking().Where(f => f.Layer == "avgpool").Select(f => f.Key).SingleAsync();
        FeatureShardRecord shard = await db.FeatureShards.AsNoTracking().Where(s => s.FeatureSetKey == key).OrderBy(s => s.Index).FirstAsync();
        var files = new FileStore(_cluster.StorageRoot);
        string file = files.Resolve(shard.Path);
        byte[] bytes = await File.ReadAllBytesAsync(file);
        Array.Fill(bytes, (byte)0x5A, bytes.Length / 2, Math.Min(4096, bytes.Length / 4));
        await File.WriteAllBytesAsync(file, bytes);
        (await files.Sha256Async(shard.Path, CancellationToken.None)).ShouldNotBe(shard.Sha256, "the shard is damaged");

        ClusterProcess second = _cluster.Worker("--device", "cpu", "--id", "second-" + _cluster.Name);
        Guid after = await SubmitAsync(spec);
        await WaitForStatusAsync(after, SweepStatus.Completed, "the sweep on the damaged set to complete");

        TrialRecord retrained = await db.Trials.AsNoTracking().SingleAsync(t => t.SweepId == after);
        retrained.Status.ShouldBe(TrialStatus.Completed, _cluster.DescribeProcesses());
        FeatureShardRecord repaired = await db.FeatureShards.AsNoTracking().SingleAsync(s => s.FeatureSetKey == key && s.Index == shard.Index);
        (await files.Sha256Async(repaired.Path, CancellationToken.None)).ShouldBe(repaired.Sha256, $"the shard's file matches its row again; was {shard.Path} {shard.Sha256}, now {repaired.Path}\n{_cluster.DescribeProcesses()}");
        second.Lines.ShouldContain(l => l.Contains("extracting shard", StringComparison.Ordinal) && l.Contains(key, StringComparison.Ordinal), second.Describe());
        retrained.ValidationAccuracy.ShouldBe(trained.ValidationAccuracy);
        retrained.ValidationLoss.ShouldNotBeNull().ShouldBe(trained.ValidationLoss.ShouldNotBeNull(), 1e-6, "the same trial on features extracted again");
    }

    [Fact]
    public async Task A_segment_past_the_delivery_limit_fails_its_trial_with_the_reason_the_sweep_goes_on_and_coordinator_errors_lists_it()
    {
        string spec = WriteSpec("poison", "[0.01, 0.02]", parallelism: 1, epochs: 1);
        _cluster.Coordinator("serve", "--cluster");
        Guid sweepId = await SubmitAsync(spec);
        await Eventually.WaitAsync(async () => (await _cluster.QueueAsync(QueueNames.GpuWork))?.Ready == 1, s_deadline, "trial 0's segment to wait in the shared queue");

        // Every "worker" that takes it dies before acknowledging it: taken and returned until the quorum queue gives up on it.
        var factory = new RabbitMQ.Client.ConnectionFactory
        {
            HostName = TestServers.RabbitHost, Port = TestServers.RabbitPort, VirtualHost = _cluster.Name,
            UserName = TestServers.RabbitUser, Password = TestServers.RabbitPassword,
        };
        // The limit counts returns: the delivery after the limit-th return is the job's last. Only that one job is taken (the
        // sweep dispatches trial 1 once trial 0 fails, and a worker is to train it).
        byte[]? poison = null;
        await using (RabbitMQ.Client.IConnection connection = await factory.CreateConnectionAsync())
        await using (RabbitMQ.Client.IChannel channel = await connection.CreateChannelAsync())
        {
            for (int delivery = 0; delivery <= Hosting.JobQueues.DeliveryLimit; delivery++)
            {
                RabbitMQ.Client.BasicGetResult taken = await Eventually.WaitAsync(
                    () => channel.BasicGetAsync(QueueNames.GpuWork, autoAck: false), s_deadline, $"delivery {delivery} of trial 0's segment");
                poison ??= taken.Body.ToArray();
                taken.Body.ToArray().ShouldBe(poison, $"delivery {delivery} is trial 0's segment again");
                await channel.BasicRejectAsync(taken.DeliveryTag, requeue: true);
            }
        }
        await Eventually.WaitAsync(async () => (await _cluster.QueueAsync(QueueNames.GpuWorkError))?.Ready == 1,
            s_deadline, "the segment to be dead-lettered to the error queue");

        TrialRecord failed = await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            return await db.Trials.AsNoTracking().SingleOrDefaultAsync(t => t.SweepId == sweepId && t.Number == 0 && t.Status == TrialStatus.Failed);
        }, s_deadline, "trial 0 to be failed by the coordinator");
        failed.FailureReason.ShouldNotBeNull().ShouldContain("reached the delivery limit");

        // The sweep goes on: a worker arriving now trains trial 1.
        _cluster.Worker("--device", "cpu");
        await WaitForStatusAsync(sweepId, SweepStatus.Completed, "the sweep to complete with trial 1");
        await using (var db = _cluster.Database())
        {
            (await db.Trials.AsNoTracking().Where(t => t.SweepId == sweepId).OrderBy(t => t.Number).Select(t => t.Status).ToListAsync())
                .ShouldBe([TrialStatus.Failed, TrialStatus.Completed]);
        }

        (int code, ClusterProcess errors) = await _cluster.RunCoordinatorAsync(s_deadline, "errors", "--cluster", "--format", "json");
        code.ShouldBe(0, errors.Describe());
        using (JsonDocument listed = JsonDocument.Parse(errors.StandardOutput))
        {
            JsonElement job = listed.RootElement.EnumerateArray().ShouldHaveSingleItem();
            job.GetProperty("kind").GetString().ShouldBe("segment");
            job.GetProperty("trial").GetGuid().ShouldBe(failed.Id);
            job.GetProperty("reason").GetString().ShouldNotBeNull().ShouldContain("reached the delivery limit");
        }
        // A dead segment is not requeued (its trial was failed): it stays listed, with one line saying why.
        (code, ClusterProcess requeue) = await _cluster.RunCoordinatorAsync(s_deadline, "errors", "--cluster", "--requeue");
        code.ShouldBe(0, requeue.Describe());
        requeue.StandardError.ShouldContain($"not requeued: trial {failed.Id} segment 0");
        await Eventually.WaitAsync(async () => (await _cluster.QueueAsync(QueueNames.GpuWorkError)) is { Ready: 1, Unacknowledged: 0 },
            s_deadline, "the dead segment to be back in the error queue once the command closed its channel");
    }
}
