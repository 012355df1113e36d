using Cluster.Contracts.Training;
using Cluster.Coordinator.Specs;

namespace Cluster.Coordinator.Search;

/// <summary>
/// A sweep's search: the method the spec's `search` names, and what its configuration numbers mean. Built from a
/// checked spec; a search the space does not allow (a grid over a distribution, ASHA over several epoch counts) is a
/// <see cref="SpecException"/> naming the line.
/// </summary>
public sealed class SearchPlan
{
    /// <summary>ASHA's reduction factor when the spec gives none (the paper's and most tools' default).</summary>
    public const double DefaultReduction = 3;

    /// <summary>Random search's number of trials when the spec gives none.</summary>
    public const int DefaultTrials = 20;

    /// <summary>The most trials one sweep may plan (each is a row and a folder of checkpoints).</summary>
    public const int MaxTrials = 100_000;

    private readonly Func<int, TrialChoice> _configuration;

    private SearchPlan(Func<int, TrialChoice> configuration, int configurations, ISearchMethod method, SweepSearch settings)
    {
        _configuration = configuration;
        Configurations = configurations;
        Method = method;
        Settings = settings;
    }

    public ISearchMethod Method { get; }

    /// <summary>The method's settings as the coordinator service records them and rebuilds the method from.</summary>
    public SweepSearch Settings { get; }

    /// <summary>How many configurations the method may create.</summary>
    public int Configurations { get; }

    /// <summary>The trial configuration <paramref name="number"/> trains.</summary>
    public TrialChoice Configuration(int number) => _configuration(number);

    public static SearchPlan For(SweepSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        var space = new SearchSpace(spec);
        SearchSpec search = spec.Search;
        string where = $"{spec.Source} line {search.Line}: search {search.Method}";
        // Draws are seeded by the spec's seed where it has one value; a list of seeds is itself searched.
        long seed = spec.Seed.IsSingle ? spec.Seed.Single : 0;
        Func<int, TrialChoice> drawn = n => space.Sample(n, seed);
        Func<int, TrialChoice> gridPoint = n => space.GridPoint(n, seed);
        SweepSearch Exhaustive(string method) => new() { Method = method, Parallelism = spec.Parallelism, Metric = spec.Metric.Name, Mode = spec.Metric.Mode };
        switch (search.Method)
        {
            case "grid":
            {
                // trials: how many times the grid is walked, each time with fresh draws of its distributions.
                long size = space.GridSize * (search.Trials ?? 1);
                if (size > MaxTrials)
                {
                    throw new SpecException($"{where} would run {size:N0} trials (limit {MaxTrials:N0}); use search: {{method: random, trials: N}}");
                }
                return new SearchPlan(gridPoint, (int)size, new ExhaustiveSearch((int)size, n => gridPoint(n).Epochs, spec.Parallelism), Exhaustive("grid"));
            }
            case "random":
            {
                int trials = search.Trials ?? DefaultTrials;
                return new SearchPlan(drawn, trials, new ExhaustiveSearch(trials, n => drawn(n).Epochs, spec.Parallelism), Exhaustive("random"));
            }
            case "asha":
            {
                if (!spec.Epochs.IsSingle)
                {
                    throw new SpecException($"{spec.Source} line {spec.Epochs.Line}: epochs must be one number with search asha: it is the most a trial trains (the top rung)");
                }
                int epochs = spec.Epochs.Single;
                int minEpochs = search.MinEpochs ?? 1;
                if (minEpochs > epochs)
                {
                    throw new SpecException($"{where}: min_epochs {minEpochs} is above epochs {epochs}");
                }
                // Without trials, ASHA visits each combination of the grid once (in grid order, distributions drawn);
                // with trials, it draws that many configurations.
                bool grid = search.Trials is null;
                if (grid && space.GridSize > MaxTrials)
                {
                    throw new SpecException($"{where} over the grid would run {space.GridSize:N0} trials (limit {MaxTrials:N0}); give search.trials to draw fewer");
                }
                int trials = grid ? (int)space.GridSize : search.Trials!.Value;
                SweepSearch settings = Exhaustive("asha") with { MinEpochs = minEpochs, MaxEpochs = epochs, Reduction = search.Reduction ?? DefaultReduction };
                return new SearchPlan(grid ? gridPoint : drawn, trials, SearchMethods.Create(settings, trials, _ => epochs), settings);
            }
            default:
                throw new SpecException($"{where}: unknown method; allowed: {string.Join(", ", SpecNames.SearchMethods)}");
        }
    }
}
