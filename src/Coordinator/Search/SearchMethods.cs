using Cluster.Contracts.Training;

namespace Cluster.Coordinator.Search;

/// <summary>Builds a sweep's search method from its recorded settings: at submission, and again for every event after a restart.</summary>
public static class SearchMethods
{
    /// <param name="configurations">How many configurations the sweep planned (trial n trains configuration n).</param>
    /// <param name="epochsOf">A configuration's own epochs (grid and random train each to its end).</param>
    public static ISearchMethod Create(SweepSearch search, int configurations, Func<int, int> epochsOf)
    {
        ArgumentNullException.ThrowIfNull(search);
        return search.Method switch
        {
            "grid" or "random" => new ExhaustiveSearch(configurations, epochsOf, search.Parallelism),
            "asha" => new AshaSearch(new AshaSettings(search.MinEpochs, search.MaxEpochs, search.Reduction, configurations, search.Parallelism,
                search.Mode == "min" ? MetricGoal.Minimize : MetricGoal.Maximize)),
            _ => throw new ArgumentException($"unknown search method '{search.Method}'", nameof(search)),
        };
    }

    /// <summary>Every configuration at once, to its full epochs (a sweep submitted without a search).</summary>
    public static SweepSearch All(int configurations) => new() { Method = "grid", Parallelism = Math.Max(1, configurations) };
}
