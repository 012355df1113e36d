using Cluster.Coordinator.Search;
using Shouldly;

namespace Cluster.Coordinator.Tests.Search;

public sealed class ExhaustiveSearchTests
{
    [Fact]
    public void Every_configuration_trains_its_own_epochs_at_most_parallelism_at_a_time()
    {
        var search = new ExhaustiveSearch(5, n => n + 1, parallelism: 2);
        var run = new SimulatedCluster(search, workers: 2, quality: n => n / 10.0, configurations: 5);

        run.RunToCompletion();

        run.Created.ShouldBe(Enumerable.Range(0, 5).ToDictionary(n => n, n => n));
        run.Trained.ShouldBe(Enumerable.Range(0, 5).ToDictionary(n => n, n => n + 1));
        run.Closed.Count.ShouldBe(5);
        run.Completed.ShouldBe(1);
        run.WorkersIdleWhileTrialsWereLeft.ShouldBe(0);
    }

    [Fact]
    public void The_first_operations_start_parallelism_trials_and_a_finished_one_is_replaced()
    {
        var search = new ExhaustiveSearch(3, _ => 4, parallelism: 2);

        search.Start().ShouldBe([new CreateTrial(0, 0), new TrainUntil(0, 4), new CreateTrial(1, 1), new TrainUntil(1, 4)]);
        search.TrialReported(1, 0.5).ShouldBe([new CloseTrial(1), new CreateTrial(2, 2), new TrainUntil(2, 4)]);
        search.Start().ShouldBeEmpty();
    }

    [Fact]
    public void A_failed_trial_does_not_stop_the_sweep_and_repeated_events_change_nothing()
    {
        var search = new ExhaustiveSearch(2, _ => 1, parallelism: 2);
        search.Start();

        search.TrialFailed(0).ShouldBeEmpty();
        search.TrialFailed(0).ShouldBeEmpty();
        search.TrialReported(0, 0.9).ShouldBeEmpty();
        search.TrialReported(1, 0.5).ShouldBe([new CloseTrial(1), new CompleteSearch()]);
        search.TrialReported(1, 0.5).ShouldBeEmpty();
    }

    [Fact]
    public void A_restored_snapshot_knows_what_was_created_and_what_still_trains()
    {
        var search = new ExhaustiveSearch(3, _ => 2, parallelism: 1);
        search.Start();
        var restored = new ExhaustiveSearch(3, _ => 2, parallelism: 1);

        restored.Restore(search.Snapshot());

        restored.Start().ShouldBeEmpty();
        restored.TrialReported(0, 0.1).ShouldBe([new CloseTrial(0), new CreateTrial(1, 1), new TrainUntil(1, 2)]);
    }

    [Fact]
    public void A_blocked_trial_gives_up_its_slot_and_once_unblocked_takes_the_next_free_one_before_new_trials()
    {
        var search = new ExhaustiveSearch(4, _ => 2, parallelism: 1);
        search.Start().ShouldBe([new CreateTrial(0, 0), new TrainUntil(0, 2)]);

        search.TrialBlocked(0).ShouldBe([new CreateTrial(1, 1), new TrainUntil(1, 2)]);
        search.TrialBlocked(0).ShouldBeEmpty("not training: a repeated event changes nothing");
        search.TrialUnblocked(0).ShouldBeEmpty("the one slot is trial 1's");
        search.TrialUnblocked(0).ShouldBeEmpty();

        // Survives a restart in the middle.
        var restored = new ExhaustiveSearch(4, _ => 2, parallelism: 1);
        restored.Restore(search.Snapshot());
        restored.TrialReported(1, 0.5).ShouldBe([new CloseTrial(1), new TrainUntil(0, 2)]);
        restored.TrialReported(0, 0.6).ShouldBe([new CloseTrial(0), new CreateTrial(2, 2), new TrainUntil(2, 2)]);
        restored.TrialBlocked(2).ShouldBe([new CreateTrial(3, 3), new TrainUntil(3, 2)]);
        restored.TrialReported(3, 0.1).ShouldBe([new CloseTrial(3)], "trial 2 still waits: the search is not complete");
        restored.TrialFailed(2).ShouldBe([new CompleteSearch()], "its set failed: nothing is left");
    }
}
