using Cluster.Coordinator.Search;
using Cluster.Coordinator.Specs;
using Shouldly;

namespace Cluster.Coordinator.Tests.Search;

public sealed class SearchSpaceTests
{
    private static readonly string s_base = Path.Combine(Path.GetTempPath(), "specs");

    private static SweepSpec Spec(params string[] lines) => SweepSpec.Parse(
        string.Join('\n', new[] { "name: test", "dataset:", "  train: train", "model: resnet18", "weights: random" }.Concat(lines)) + "\n",
        "spec.yaml", s_base);

    [Fact]
    public void A_grid_enumerates_every_combination_of_the_lists_once_and_draws_the_distributions()
    {
        var space = new SearchSpace(Spec("strategy: [feature-extractor, fine-tune-top, fine-tune-all]", "cutoff: layer3",
            "head: [logistic, mlp]", "lr: {log_uniform: [1.0e-4, 1.0e-2]}"));

        space.GridSize.ShouldBe(6);
        TrialChoice[] grid = Enumerable.Range(0, 6).Select(n => space.GridPoint(n, seed: 7)).ToArray();
        grid.Select(t => (t.Strategy, t.Head)).Distinct().Count().ShouldBe(6);
        // The last field varies fastest, like nested loops in the spec's order.
        grid.Select(t => t.Head).Take(2).ShouldBe(["logistic", "mlp"]);
        grid.ShouldAllBe(t => t.Lr >= 1e-4 && t.Lr <= 1e-2);
        grid.Select(t => t.Lr).Distinct().Count().ShouldBe(6);
        // Configuration n is the same trial every time; n + GridSize is the same combination with a fresh draw.
        space.GridPoint(4, seed: 7).ShouldBe(grid[4]);
        TrialChoice again = space.GridPoint(10, seed: 7);
        (again.Strategy, again.Head).ShouldBe((grid[4].Strategy, grid[4].Head));
        again.Lr.ShouldNotBe(grid[4].Lr);
    }

    [Fact]
    public void Random_draws_are_reproducible_by_seed_and_follow_their_distributions()
    {
        var space = new SearchSpace(Spec("strategy: fine-tune-all", "lr: {log_uniform: [1.0e-4, 1.0e-2]}",
            "batch_size: {uniform: [16, 64]}", "head: [logistic, mlp, knn]"));

        TrialChoice[] draws = Enumerable.Range(0, 2000).Select(n => space.Sample(n, seed: 3)).ToArray();

        space.Sample(17, seed: 3).ShouldBe(draws[17]);
        space.Sample(17, seed: 4).Lr.ShouldNotBe(draws[17].Lr);
        draws.ShouldAllBe(t => t.Lr >= 1e-4 && t.Lr <= 1e-2 && t.BatchSize >= 16 && t.BatchSize <= 64);
        // log-uniform: the median is the geometric mean of the bounds (1e-3), a third of the draws in each decade half.
        double median = draws.Select(t => t.Lr).Order().ElementAt(1000);
        median.ShouldBeInRange(0.8e-3, 1.25e-3);
        draws.Count(t => t.Lr < 1e-3).ShouldBeInRange(900, 1100);
        draws.Select(t => t.Head).Distinct().Order().ShouldBe(["knn", "logistic", "mlp"]);
        draws.Count(t => t.Head == "mlp").ShouldBeInRange(580, 760);
        draws.Select(t => t.BatchSize).Average().ShouldBeInRange(38.0, 42.0);
    }

    [Fact]
    public void The_design_example_plans_a_grid_of_twelve_trials()
    {
        SearchPlan plan = SearchPlan.For(SweepSpec.Load(Path.Combine(ExamplesFolder(), "fashion-transfer.yaml")));

        plan.Configurations.ShouldBe(3 * 2 * 2);
        plan.Method.ShouldBeOfType<ExhaustiveSearch>();
        plan.Method.Start().OfType<CreateTrial>().Count().ShouldBe(4); // parallelism: 4
        plan.Configuration(0).ShouldBe(plan.Configuration(0));
    }

    [Fact]
    public void Asha_takes_its_rungs_from_the_spec_and_needs_one_epochs_value()
    {
        SearchPlan plan = SearchPlan.For(Spec("strategy: fine-tune-all", "lr: [0.1, 0.01, 0.001]", "epochs: 9",
            "search: {method: asha, min_epochs: 1, reduction: 3}", "parallelism: 2"));

        plan.Configurations.ShouldBe(3);
        plan.Method.ShouldBeOfType<AshaSearch>().RungEpochs.ShouldBe([1, 3, 9]);
        plan.Method.Start().ShouldBe([new CreateTrial(0, 0), new TrainUntil(0, 1), new CreateTrial(1, 1), new TrainUntil(1, 1)]);

        string error = Should.Throw<SpecException>(() => SearchPlan.For(Spec("strategy: fine-tune-all", "epochs: [3, 9]", "search: asha"))).Message;
        error.ShouldBe("spec.yaml line 7: epochs must be one number with search asha: it is the most a trial trains (the top rung)");
    }

    [Fact]
    public void Random_search_draws_its_trials()
    {
        SearchPlan plan = SearchPlan.For(Spec("strategy: fine-tune-all", "lr: {uniform: [0.001, 0.1]}", "search: {method: random, trials: 5}"));

        plan.Configurations.ShouldBe(5);
        Enumerable.Range(0, 5).Select(n => plan.Configuration(n).Lr).Distinct().Count().ShouldBe(5);
    }

    private static string ExamplesFolder()
    {
        for (DirectoryInfo? folder = new(AppContext.BaseDirectory); folder is not null; folder = folder.Parent)
        {
            if (File.Exists(Path.Combine(folder.FullName, "Cluster.sln")))
            {
                return Path.Combine(folder.FullName, "examples");
            }
        }
        throw new DirectoryNotFoundException($"no Cluster.sln above {AppContext.BaseDirectory}");
    }
}
