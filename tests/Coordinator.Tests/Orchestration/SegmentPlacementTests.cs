using Cluster.Contracts;
using Cluster.Contracts.Training;
using Cluster.Contracts.Workers;
using Cluster.Coordinator.Orchestration;
using Shouldly;

namespace Cluster.Coordinator.Tests.Orchestration;

/// <summary>Which queue a segment goes to, from heartbeats and outcomes, on a clock the test moves.</summary>
public sealed class SegmentPlacementTests
{
    private readonly ManualClock _clock = new(new DateTimeOffset(2026, 12, 3, 12, 0, 0, TimeSpan.Zero));
    private readonly SegmentPlacement _placement;

    public SegmentPlacementTests() => _placement = new SegmentPlacement(_clock, lostAfter: TimeSpan.FromSeconds(15));

    private static TrainSegment Segment(Guid trial, int index, params string[] features) => new()
    {
        SweepId = Guid.Empty, TrialId = trial, Segment = index, EpochFrom = index, EpochTo = index + 1, IsLast = false,
        Settings = new TrialSettings
        {
            Model = "resnet18", Weights = "imagenet", WeightsHash = "h", InputSize = 32, Strategy = "fine-tune-top", Lr = 0.01, Optimizer = "sgd",
            Epochs = 4, BatchSize = 8,
        },
        Data = new TrialData
        {
            TrainDatasetId = "train", ClassNames = ["a", "b"],
            CutoffFeatures = features.Length > 0 ? new Dictionary<string, string> { ["train"] = features[0] } : new Dictionary<string, string>(),
            HeadFeatures = features.Length > 1 ? new Dictionary<string, string> { ["train"] = features[1] } : new Dictionary<string, string>(),
        },
    };

    private void Heartbeat(string worker, string? job = null, bool directQueue = true, params string[] resident) => _placement.Heard(new WorkerHeartbeat
    {
        WorkerId = worker, Host = "h", Device = "cpu", Version = "1", SentAt = _clock.GetUtcNow().UtcDateTime, CurrentJob = job,
        ResidentFeatureSets = resident, DirectQueue = directQueue ? QueueNames.WorkerQueue(worker) : null,
    });

    private static Uri Own(string worker) => SegmentPlacement.DirectAddress(QueueNames.WorkerQueue(worker));

    [Fact]
    public void A_free_worker_that_holds_the_features_gets_the_segment_in_its_own_queue()
    {
        Heartbeat("a", resident: "layer3");
        Heartbeat("b", resident: "layer4");
        _placement.Route(Segment(Guid.NewGuid(), 0, "layer4")).ShouldBe(Own("b"));
        _placement.Route(Segment(Guid.NewGuid(), 0, "layer3")).ShouldBe(Own("a"));
        _placement.Directed.ShouldBe(2);
    }

    [Fact]
    public void No_holder_images_only_or_a_worker_without_its_own_queue_go_to_the_shared_queue()
    {
        Heartbeat("a", resident: "layer3");
        Heartbeat("embedded", directQueue: false, resident: "layer4");
        _placement.Route(Segment(Guid.NewGuid(), 0, "avgpool")).ShouldBe(SegmentPlacement.SharedQueue);
        _placement.Route(Segment(Guid.NewGuid(), 0)).ShouldBe(SegmentPlacement.SharedQueue, "from images: nothing in memory to go back to");
        _placement.Route(Segment(Guid.NewGuid(), 0, "layer4")).ShouldBe(SegmentPlacement.SharedQueue);
        _placement.Route(Segment(Guid.NewGuid(), 0, "layer3", "avgpool")).ShouldBe(SegmentPlacement.SharedQueue, "it holds only one of the two sets");
        _placement.Shared.ShouldBe(4);
    }

    [Fact]
    public void A_busy_holder_is_passed_over_and_one_directed_segment_at_a_time_never_starves_the_others()
    {
        Heartbeat("a", job: "extract/x/0", resident: "layer3");
        _placement.Route(Segment(Guid.NewGuid(), 0, "layer3")).ShouldBe(SegmentPlacement.SharedQueue, "busy with a job from the shared queue");

        Heartbeat("a", resident: "layer3");
        Guid first = Guid.NewGuid();
        _placement.Route(Segment(first, 0, "layer3")).ShouldBe(Own("a"));
        _placement.Route(Segment(Guid.NewGuid(), 0, "layer3")).ShouldBe(SegmentPlacement.SharedQueue, "its lane is taken by the first");

        // The outcome frees the lane, and the trial's next segment goes back to it.
        _placement.Finished("a", first, 0);
        _placement.Route(Segment(first, 1, "layer3")).ShouldBe(Own("a"));
    }

    [Fact]
    public void An_outcome_teaches_what_the_worker_holds_before_its_next_heartbeat_says_so()
    {
        Heartbeat("a");
        Guid trial = Guid.NewGuid();
        _placement.Route(Segment(trial, 0, "layer3")).ShouldBe(SegmentPlacement.SharedQueue);
        _placement.Finished("a", trial, 0);
        _placement.Route(Segment(trial, 1, "layer3")).ShouldBe(Own("a"));

        // Long after, a heartbeat that does not list the set (the worker's budget evicted it) wins.
        _placement.Finished("a", trial, 1);
        _clock.Advance(TimeSpan.FromSeconds(20));
        Heartbeat("a");
        _placement.Route(Segment(trial, 2, "layer3")).ShouldBe(SegmentPlacement.SharedQueue);
    }

    [Fact]
    public void A_heartbeat_naming_the_job_just_finished_does_not_make_the_worker_busy()
    {
        Heartbeat("a", resident: "layer3");
        Guid trial = Guid.NewGuid();
        _placement.Route(Segment(trial, 0, "layer3")).ShouldBe(Own("a"));
        _placement.Finished("a", trial, 0);
        // Sent before the outcome, read after it.
        Heartbeat("a", job: $"train/{trial}/0", resident: "layer3");
        _placement.Route(Segment(trial, 1, "layer3")).ShouldBe(Own("a"));
    }

    [Fact]
    public void Silent_and_stopped_workers_get_nothing_and_the_latest_to_finish_is_preferred()
    {
        Heartbeat("a", resident: "layer3");
        Heartbeat("b", resident: "layer3");
        Guid trial = Guid.NewGuid();
        _placement.Route(Segment(trial, 0, "layer3")).ShouldBe(Own("a"), "equal: by id");
        _placement.Finished("b", trial, 0);
        _placement.Route(Segment(trial, 1, "layer3")).ShouldBe(Own("b"), "b just finished; a's lane is free too, but b was free last");

        _placement.Finished("b", trial, 1);
        _placement.Stopped("b");
        _placement.Route(Segment(trial, 2, "layer3")).ShouldBe(Own("a"));
        _placement.Finished("a", trial, 2);

        _clock.Advance(TimeSpan.FromSeconds(16));
        _placement.Route(Segment(trial, 3, "layer3")).ShouldBe(SegmentPlacement.SharedQueue, "a has been silent past the lost-after time");
    }

    [Fact]
    public void A_directed_segment_with_no_outcome_frees_its_worker_once_an_idle_heartbeat_comes_long_after()
    {
        Heartbeat("a", resident: "layer3");
        _placement.Route(Segment(Guid.NewGuid(), 0, "layer3")).ShouldBe(Own("a"));
        _clock.Advance(TimeSpan.FromSeconds(5));
        Heartbeat("a", resident: "layer3");
        _placement.Route(Segment(Guid.NewGuid(), 0, "layer3")).ShouldBe(SegmentPlacement.SharedQueue, "the first may still be on its way");
        // Past the queue's wait and a heartbeat's staleness: the first moved on (passed on or dead-lettered).
        _clock.Advance(QueueNames.DirectedWait + TimeSpan.FromSeconds(16));
        Heartbeat("a", resident: "layer3");
        _placement.Route(Segment(Guid.NewGuid(), 0, "layer3")).ShouldBe(Own("a"));
    }

    [Fact]
    public void A_failed_segment_is_not_sent_back_to_the_worker_it_failed_on()
    {
        Heartbeat("a", resident: "layer3");
        Heartbeat("b", resident: "layer3");
        Guid trial = Guid.NewGuid();
        _placement.Route(Segment(trial, 0, "layer3")).ShouldBe(Own("a"));
        _placement.Finished("a", trial, 0, failed: true);
        _placement.Route(Segment(trial, 0, "layer3")).ShouldBe(Own("b"), "the retry goes elsewhere");
        _clock.Advance(TimeSpan.FromSeconds(1));
        _placement.Finished("b", trial, 0);
        _placement.Route(Segment(Guid.NewGuid(), 0, "layer3")).ShouldBe(Own("b"), "a new trial: both may take it, and b finished last");
    }

    [Fact]
    public void Switched_off_it_sends_everything_to_the_shared_queue()
    {
        var off = new SegmentPlacement(_clock, enabled: false);
        off.Heard(new WorkerHeartbeat
        {
            WorkerId = "a", Host = "h", Device = "cpu", Version = "1", SentAt = _clock.GetUtcNow().UtcDateTime,
            ResidentFeatureSets = ["layer3"], DirectQueue = QueueNames.WorkerQueue("a"),
        });
        off.Route(Segment(Guid.NewGuid(), 0, "layer3")).ShouldBe(SegmentPlacement.SharedQueue);
        off.Directed.ShouldBe(0);
    }

    [Fact]
    public void Worker_queue_names_keep_to_safe_characters()
    {
        QueueNames.WorkerQueue("gpu-node-3.example_1").ShouldBe("gpu-work.gpu-node-3.example_1");
        QueueNames.WorkerQueue("node/1 ü").ShouldBe("gpu-work.node_1__");
        SegmentPlacement.DirectAddress("gpu-work.a").ToString().ShouldBe("exchange:gpu-work.a?alternateexchange=gpu-work");
    }

    private sealed class ManualClock(DateTimeOffset start) : TimeProvider
    {
        private DateTimeOffset _now = start;

        public override DateTimeOffset GetUtcNow() => _now;

        public void Advance(TimeSpan by) => _now += by;
    }
}
