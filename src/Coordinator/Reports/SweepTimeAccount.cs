using Cluster.Storage.Database.Entities;

namespace Cluster.Coordinator.Reports;

/// <summary>One feature set a sweep's trials train on: what extracting it took, and what sharing it saved.</summary>
/// <param name="Trials">Trials of the sweep that trained on it.</param>
/// <param name="Seconds">Its complete shards' extraction seconds, summed (a shard computed with other taps in one pass
/// records that pass's time).</param>
/// <param name="ExtractedForThisSweep">False when every shard was recorded before the previous sweep was created: the set
/// came from the cache and cost this sweep nothing.</param>
/// <param name="SavedSeconds">(trials − 1) × seconds: the extractions that trials without sharing would have repeated.</param>
public sealed record FeatureSetTime(string Key, string Layer, string DatasetId, int Trials, double Seconds, bool ExtractedForThisSweep, double SavedSeconds);

/// <summary>
/// Where a sweep's time went, in worker-seconds summed over trials (trials run side by side, so the sum can exceed the
/// wall time). Workers record no decode time of their own: decoding is inside extraction (and inside training for
/// strategies that train from images).
/// </summary>
/// <param name="ExtractionSeconds">Shards of the sweep's feature sets extracted for it; taps computed in one pass count once.</param>
/// <param name="TrainingSeconds">Completed segments' seconds.</param>
/// <param name="QueuedSeconds">Each trial's wait from its creation to its first dispatch (the parallelism limit, ASHA's order).</param>
/// <param name="DispatchGapSeconds">From dispatch to the worker starting the first segment, and between one segment's end and
/// the next one's start (the queue, recording, an ASHA trial paused at its rung).</param>
public sealed record SweepTimeAccount(
    double ExtractionSeconds,
    double TrainingSeconds,
    double QueuedSeconds,
    double DispatchGapSeconds,
    IReadOnlyList<FeatureSetTime> FeatureSets)
{
    public double SharingSavedSeconds => FeatureSets.Sum(f => f.SavedSeconds);

    public static SweepTimeAccount Compute(SweepReportData data)
    {
        ArgumentNullException.ThrowIfNull(data);
        // A trial that never started (an ASHA configuration never drawn) used nothing.
        TrialRecord[] started = [.. data.Trials.Where(t => t.StartedAt is not null)];
        var users = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (string key in started.SelectMany(SweepReportData.FeatureKeysOf))
        {
            users[key] = users.GetValueOrDefault(key) + 1;
        }
        DateTime after = data.PreviousSweepCreatedAt ?? DateTime.MinValue;
        var sets = new List<FeatureSetTime>();
        var passes = new HashSet<(string Dataset, int Shard, string? Worker, double Seconds)>();
        double extraction = 0;
        ILookup<string, FeatureShardRecord> shardsOf = data.FeatureShards.Where(s => s.Status == FeatureShardStatus.Complete).ToLookup(s => s.FeatureSetKey, StringComparer.Ordinal);
        foreach (FeatureSetRecord set in data.FeatureSets.OrderBy(s => s.Layer, StringComparer.Ordinal).ThenBy(s => s.Key, StringComparer.Ordinal))
        {
            FeatureShardRecord[] shards = [.. shardsOf[set.Key]];
            FeatureShardRecord[] ours = [.. shards.Where(s => s.CreatedAt > after)];
            foreach (FeatureShardRecord shard in ours)
            {
                // The taps of one pass over a shard's images record the same pass (same dataset, shard, worker and time).
                if (passes.Add((set.DatasetId, shard.Index, shard.WorkerId, shard.Seconds)))
                {
                    extraction += shard.Seconds;
                }
            }
            int trials = users.GetValueOrDefault(set.Key);
            double seconds = shards.Sum(s => s.Seconds);
            sets.Add(new FeatureSetTime(set.Key, set.Layer, set.DatasetId, trials, seconds, ours.Length > 0, Math.Max(0, trials - 1) * seconds));
        }

        double training = data.Segments.Where(s => s.Status == SegmentStatus.Completed).Sum(s => s.Seconds);
        double queued = started.Sum(t => Positive(t.StartedAt!.Value - t.CreatedAt));
        double gaps = 0;
        Dictionary<Guid, DateTime?> dispatched = data.Trials.ToDictionary(t => t.Id, t => t.StartedAt);
        foreach (IGrouping<Guid, SegmentRecord> trial in data.Segments.Where(s => s.StartedAt is not null).GroupBy(s => s.TrialId))
        {
            // The first segment waited from the trial's first dispatch; each later one from the end of the one before.
            DateTime? previousEnd = dispatched.GetValueOrDefault(trial.Key);
            foreach (SegmentRecord segment in trial.OrderBy(s => s.Index))
            {
                if (previousEnd is DateTime end)
                {
                    gaps += Positive(segment.StartedAt!.Value - end);
                }
                previousEnd = segment.CompletedAt;
            }
        }
        return new SweepTimeAccount(extraction, training, queued, gaps, sets);
    }

    // Times come from the coordinator's and the workers' clocks; a small skew between them is not negative waiting.
    private static double Positive(TimeSpan span) => Math.Max(0, span.TotalSeconds);
}
