namespace Cluster.Coordinator.Search;

/// <summary>
/// A search method as pure callbacks (after determined's searcher): each event returns the operations it leads to,
/// with no I/O, so that a method is tested on synthetic metric streams and its state survives a coordinator restart
/// through <see cref="Snapshot"/> and <see cref="Restore"/>. Events about a trial the method is not waiting on
/// (duplicates, late or reordered deliveries) return nothing and change nothing.
/// </summary>
public interface ISearchMethod
{
    /// <summary>The first operations of the sweep. Called once.</summary>
    IReadOnlyList<SearchOperation> Start();

    /// <summary>
    /// The trial finished the training its last <see cref="TrainUntil"/> asked for (or stopped early before it), with
    /// its validation metric then.
    /// </summary>
    IReadOnlyList<SearchOperation> TrialReported(int trial, double metric);

    /// <summary>The trial failed for good (its attempts are spent, or the features it trains on could not be made);
    /// the sweep goes on without it.</summary>
    IReadOnlyList<SearchOperation> TrialFailed(int trial);

    /// <summary>
    /// The trial the last <see cref="TrainUntil"/> named cannot start yet: the frozen prefix it trains on is still being
    /// extracted. It gives up its slot, so that a trial whose inputs are ready trains meanwhile (no worker idles while
    /// features are made); the method keeps what it asked of it.
    /// </summary>
    IReadOnlyList<SearchOperation> TrialBlocked(int trial);

    /// <summary>
    /// A blocked trial's inputs are ready: it is asked to train again (the same <see cref="TrainUntil"/>) as soon as a
    /// slot is free, before any new trial starts or any other is promoted. Unknown or not blocked: nothing.
    /// </summary>
    IReadOnlyList<SearchOperation> TrialUnblocked(int trial);

    /// <summary>The method's whole state, as JSON.</summary>
    string Snapshot();

    /// <summary>Continues from a <see cref="Snapshot"/> of a method built with the same settings.</summary>
    void Restore(string snapshot);
}

/// <summary>Which way the sweep's metric is better.</summary>
public enum MetricGoal
{
    Maximize,
    Minimize,
}

/// <summary>How methods write their snapshots: a score may be -∞ (a NaN metric ranks last).</summary>
internal static class SearchJson
{
    public static System.Text.Json.JsonSerializerOptions Options { get; } = new()
    {
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };
}
