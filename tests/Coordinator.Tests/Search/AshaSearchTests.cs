using Cluster.Coordinator.Search;
using Shouldly;

namespace Cluster.Coordinator.Tests.Search;

public sealed class AshaSearchTests
{
    [Theory]
    [InlineData(1, 9, 3.0, new[] { 1, 3, 9 })]
    [InlineData(1, 27, 3.0, new[] { 1, 3, 9, 27 })]
    [InlineData(1, 10, 3.0, new[] { 1, 3, 10 })]
    [InlineData(2, 8, 2.0, new[] { 2, 4, 8 })]
    [InlineData(4, 4, 3.0, new[] { 4 })]
    [InlineData(1, 2, 3.0, new[] { 2 })]
    public void Rungs_grow_by_the_reduction_and_end_at_the_most_epochs(int min, int max, double reduction, int[] expected) =>
        AshaSearch.Rungs(min, max, reduction).ShouldBe(expected);

    [Fact]
    public void A_trial_is_promoted_once_it_is_in_the_top_third_of_its_rung_and_until_then_new_trials_start()
    {
        var asha = new AshaSearch(new AshaSettings(1, 9, 3, MaxTrials: 10, Parallelism: 1, MetricGoal.Maximize));

        asha.Start().ShouldBe([new CreateTrial(0, 0), new TrainUntil(0, 1)]);
        asha.TrialReported(0, 0.5).ShouldBe([new CreateTrial(1, 1), new TrainUntil(1, 1)]);
        asha.TrialReported(1, 0.9).ShouldBe([new CreateTrial(2, 2), new TrainUntil(2, 1)]);
        // Three at rung 1: the best third (one trial, the 0.9) goes on to 3 epochs instead of a fourth trial starting.
        asha.TrialReported(2, 0.1).ShouldBe([new TrainUntil(1, 3)]);
        asha.TrialReported(1, 0.95).ShouldBe([new CreateTrial(3, 3), new TrainUntil(3, 1)]);
    }

    [Fact]
    public void A_blocked_trial_holds_no_slot_and_once_ready_goes_before_promotions_and_new_trials()
    {
        var asha = new AshaSearch(new AshaSettings(1, 9, 3, MaxTrials: 4, Parallelism: 1, MetricGoal.Maximize));
        asha.Start().ShouldBe([new CreateTrial(0, 0), new TrainUntil(0, 1)]);

        asha.TrialBlocked(0).ShouldBe([new CreateTrial(1, 1), new TrainUntil(1, 1)]);
        asha.TrialUnblocked(0).ShouldBeEmpty("trial 1 holds the slot");
        asha.TrialReported(1, 0.9).ShouldBe([new TrainUntil(0, 1)], "the unblocked trial first, at the rung it was created for");
        asha.TrialReported(0, 0.5).ShouldBe([new CreateTrial(2, 2), new TrainUntil(2, 1)]);
        asha.TrialBlocked(2).ShouldBe([new CreateTrial(3, 3), new TrainUntil(3, 1)]);
        asha.TrialReported(3, 0.1).ShouldBe([new TrainUntil(1, 3)], "three at rung 1 now: the best is promoted while trial 2 waits");
        asha.TrialReported(1, 0.95).ShouldBeEmpty("every trial is created and trial 2 still waits: not complete yet");
        asha.TrialFailed(2).ShouldSatisfyAllConditions(
            ops => ops.OfType<CompleteSearch>().ShouldHaveSingleItem(),
            ops => ops.OfType<CloseTrial>().Select(c => c.Trial).ShouldBe([0, 1, 3], "paused at their rungs, never to be promoted now"));
    }

    [Fact]
    public void With_a_loss_the_lowest_is_promoted()
    {
        var asha = new AshaSearch(new AshaSettings(1, 9, 3, MaxTrials: 10, Parallelism: 3, MetricGoal.Minimize));
        asha.Start();

        asha.TrialReported(0, 0.7);
        asha.TrialReported(1, 0.2);
        asha.TrialReported(2, 0.4).ShouldContain(new TrainUntil(1, 3));
    }

    [Fact]
    public void Duplicate_and_late_reports_change_nothing()
    {
        var asha = new AshaSearch(new AshaSettings(1, 9, 3, MaxTrials: 10, Parallelism: 2, MetricGoal.Maximize));
        asha.Start();
        asha.TrialReported(0, 0.5);
        string before = asha.Snapshot();

        asha.TrialReported(0, 0.99).ShouldBeEmpty();   // a redelivered report of a trial no longer training
        asha.TrialReported(7, 0.99).ShouldBeEmpty();   // a trial that does not exist
        asha.TrialFailed(0).ShouldBeEmpty();           // a failure after its report

        asha.Snapshot().ShouldBe(before);
    }

    [Fact]
    public void A_failed_trial_is_never_promoted_and_the_search_still_completes()
    {
        var asha = new AshaSearch(new AshaSettings(1, 3, 3, MaxTrials: 3, Parallelism: 3, MetricGoal.Maximize));
        asha.Start().OfType<CreateTrial>().Count().ShouldBe(3);

        asha.TrialFailed(1).ShouldBeEmpty();           // nothing to start: all three exist, no rung is full enough
        asha.TrialReported(0, 0.2).ShouldBeEmpty();
        // Two results at rung 1: floor(2/3) = 0 promotable, and no more trials may start: the search ends.
        asha.TrialReported(2, 0.8).ShouldBe([new CloseTrial(0), new CloseTrial(2), new CompleteSearch()]);
        asha.TrialReported(2, 0.8).ShouldBeEmpty();
    }

    [Fact]
    public void On_27_configurations_asha_keeps_every_worker_busy_finds_the_best_and_trains_a_fraction_of_the_grid()
    {
        const int Configurations = 27, MaxEpochs = 9, Workers = 3;
        var asha = new AshaSearch(new AshaSettings(1, MaxEpochs, 3, Configurations, Workers, MetricGoal.Maximize));
        var run = new SimulatedCluster(asha, Workers, Quality, Configurations);

        run.RunToCompletion();

        run.Completed.ShouldBe(1);
        run.Created.Count.ShouldBe(Configurations);
        run.Created.Values.Distinct().Count().ShouldBe(Configurations);
        run.Closed.Keys.Order().ShouldBe(run.Created.Keys.Order());  // every trial closed, none twice (Closed would throw)
        run.WorkersIdleWhileTrialsWereLeft.ShouldBe(0);
        int best = Enumerable.Range(0, Configurations).MaxBy(Quality);
        run.Trained[run.Created.Single(c => c.Value == best).Key].ShouldBe(MaxEpochs);
        // Every trial trained to a rung, never past the top.
        run.Trained.Values.ShouldAllBe(e => e == 1 || e == 3 || e == 9);
        // Grid would train 27 × 9 = 243 epochs; ASHA's rungs keep about a third of each: 27 + 9×2 + 3×6 = 63.
        run.Trained.Values.Sum().ShouldBeLessThan((int)(0.4 * Configurations * MaxEpochs));
    }

    [Fact]
    public void A_restored_snapshot_continues_with_the_same_decisions()
    {
        AshaSettings settings = new(1, 9, 3, MaxTrials: 27, Parallelism: 3, MetricGoal.Maximize);
        var uninterrupted = new SimulatedCluster(new AshaSearch(settings), 3, Quality, 27);
        uninterrupted.RunToCompletion();

        var first = new SimulatedCluster(new AshaSearch(settings), 3, Quality, 27);
        first.Run(events: 20);
        var restored = new AshaSearch(settings);
        restored.Restore(first.Method.Snapshot());
        first.ContinueWith(restored);
        first.RunToCompletion();

        first.Log.ShouldBe(uninterrupted.Log);
    }

    /// <summary>A configuration's final quality: a fixed shuffle of 0..26, so the best is not simply the first or last.</summary>
    private static double Quality(int configuration) => ((configuration * 17) % 27) / 27.0;
}

/// <summary>
/// A discrete-event cluster for search methods: each TrainUntil takes as many time units as the epochs it adds; the
/// earliest-finishing trial reports first, its metric rising with epochs towards its configuration's quality (so the
/// ranking at every rung is the final ranking, as a well-behaved learning curve would give).
/// </summary>
internal sealed class SimulatedCluster
{
    private readonly int _workers;
    private readonly Func<int, double> _quality;
    private readonly int _configurations;
    private readonly PriorityQueue<int, (double Time, int Trial)> _finishing = new();
    private double _now;
    private bool _started;

    public SimulatedCluster(ISearchMethod method, int workers, Func<int, double> quality, int configurations)
    {
        Method = method;
        _workers = workers;
        _quality = quality;
        _configurations = configurations;
    }

    public ISearchMethod Method { get; private set; }

    public Dictionary<int, int> Created { get; } = [];

    public Dictionary<int, int> Trained { get; } = [];

    public Dictionary<int, bool> Closed { get; } = [];

    public int Completed { get; private set; }

    public int WorkersIdleWhileTrialsWereLeft { get; private set; }

    public List<string> Log { get; } = [];

    public void ContinueWith(ISearchMethod method) => Method = method;

    public void RunToCompletion() => Run(int.MaxValue);

    public void Run(int events)
    {
        if (!_started)
        {
            _started = true;
            Apply(Method.Start());
        }
        for (int i = 0; i < events && _finishing.TryDequeue(out int trial, out var when); i++)
        {
            _now = when.Time;
            double metric = _quality(Created[trial]) * (1 - Math.Exp(-Trained[trial] / 2.0));
            Log.Add($"t={_now} trial {trial} reports {metric:F4}");
            Apply(Method.TrialReported(trial, metric));
            if (Completed == 0 && Created.Count < _configurations && _finishing.Count < _workers)
            {
                WorkersIdleWhileTrialsWereLeft++;
            }
        }
    }

    private void Apply(IReadOnlyList<SearchOperation> operations)
    {
        foreach (SearchOperation operation in operations)
        {
            Log.Add(operation.ToString()!);
            switch (operation)
            {
                case CreateTrial c:
                    Created.Add(c.Trial, c.Configuration);
                    Trained[c.Trial] = 0;
                    break;
                case TrainUntil t:
                    t.Epochs.ShouldBeGreaterThan(Trained[t.Trial]);
                    _finishing.Enqueue(t.Trial, (_now + t.Epochs - Trained[t.Trial], t.Trial));
                    Trained[t.Trial] = t.Epochs;
                    break;
                case CloseTrial c:
                    Closed.Add(c.Trial, true);
                    break;
                case CompleteSearch:
                    Completed++;
                    _finishing.Count.ShouldBe(0);
                    break;
            }
        }
    }
}
