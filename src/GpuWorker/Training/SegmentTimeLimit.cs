namespace Cluster.GpuWorker.Training;

/// <summary>
/// How long a worker trains one segment before it ends it early and lets the coordinator send the rest as the next
/// segment (`Worker:SegmentTimeLimitSeconds`). The broker takes back a delivery held longer than its consumer timeout,
/// so a segment of slow epochs would otherwise be trained again and again elsewhere and never completed; the deployment
/// sets the consumer timeout above this bound plus one epoch, test scoring and the checkpoint write.
/// </summary>
/// <param name="Limit">Null: no bound (a segment trains all its epochs).</param>
public sealed record SegmentTimeLimit(TimeSpan? Limit)
{
    public static SegmentTimeLimit None { get; } = new((TimeSpan?)null);

    /// <summary>From the option's seconds: negative means no bound; 0 ends every segment after its first epoch.</summary>
    public static SegmentTimeLimit FromSeconds(double seconds) => seconds < 0 ? None : new(TimeSpan.FromSeconds(seconds));

    /// <summary>
    /// Whether one more epoch fits: the time spent so far plus the longest epoch yet must stay within the limit. The
    /// first epoch of a segment always trains, so every segment makes progress whatever the limit.
    /// </summary>
    public bool AllowsAnotherEpoch(TimeSpan elapsed, TimeSpan longestEpoch, int epochsTrained) =>
        epochsTrained == 0 || Limit is not TimeSpan limit || elapsed + longestEpoch <= limit;
}
