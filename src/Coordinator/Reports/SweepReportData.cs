using System.Text.Json;
using System.Text.Json.Nodes;
using Cluster.Contracts.Training;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Microsoft.EntityFrameworkCore;

namespace Cluster.Coordinator.Reports;

/// <summary>
/// Everything a sweep's report shows, read once: the sweep, its trials, their segments and validation metrics, and the
/// feature sets (with their shards) that the trials' plans name. Plain records, so the computations on them are tested
/// on hand-made rows.
/// </summary>
public sealed record SweepReportData
{
    private static readonly JsonSerializerOptions s_json = new(JsonSerializerDefaults.Web);

    public required SweepRecord Sweep { get; init; }

    public required IReadOnlyList<TrialRecord> Trials { get; init; }

    public IReadOnlyList<SegmentRecord> Segments { get; init; } = [];

    /// <summary>Validation rows only: what the curves and the rungs plot.</summary>
    public IReadOnlyList<EpochMetricRecord> ValidationMetrics { get; init; } = [];

    public IReadOnlyList<FeatureSetRecord> FeatureSets { get; init; } = [];

    public IReadOnlyList<FeatureShardRecord> FeatureShards { get; init; } = [];

    /// <summary>
    /// When the sweep created just before this one was: a shard recorded before then was not extracted for this sweep
    /// (its sets are extracted before the sweep is recorded, so the sweep's own time cannot bound them).
    /// </summary>
    public DateTime? PreviousSweepCreatedAt { get; init; }

    /// <summary>The search method and metric the sweep was recorded with (grid when none was).</summary>
    public SweepSearch Search => Sweep.Search is string search
        ? JsonSerializer.Deserialize<SweepSearch>(search, s_json)!
        : new SweepSearch { Method = "grid", Parallelism = 1 };

    /// <summary>The feature-set keys a trial trains on (cutoff and head sets, every dataset), from its plan (a PlannedTrial).</summary>
    public static IReadOnlySet<string> FeatureKeysOf(TrialRecord trial)
    {
        ArgumentNullException.ThrowIfNull(trial);
        var keys = new HashSet<string>(StringComparer.Ordinal);
        // Only the two maps are read, so a plan written by an older or newer coordinator still reports its sets.
        JsonNode? data = trial.Plan is string plan ? JsonNode.Parse(plan)?["data"] : null;
        foreach (string map in new[] { "cutoffFeatures", "headFeatures" })
        {
            if (data?[map] is JsonObject sets)
            {
                keys.UnionWith(sets.Select(kv => kv.Value?.GetValue<string>()).OfType<string>());
            }
        }
        if (keys.Count == 0 && trial.PrefixKey is string prefix)
        {
            keys.Add(prefix);
        }
        return keys;
    }

    /// <returns>Null when no sweep has the id.</returns>
    public static async Task<SweepReportData?> LoadAsync(IDbContextFactory<ClusterDbContext> databases, Guid sweepId, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(databases);
        await using ClusterDbContext db = await databases.CreateDbContextAsync(ct);
        SweepRecord? sweep = await db.Sweeps.AsNoTracking().SingleOrDefaultAsync(s => s.Id == sweepId, ct);
        if (sweep is null)
        {
            return null;
        }
        List<TrialRecord> trials = await db.Trials.AsNoTracking().Where(t => t.SweepId == sweepId).OrderBy(t => t.Number).ToListAsync(ct);
        // Joined on the sweep's trials in the database: one query each, whatever the number of trials.
        List<SegmentRecord> segments = await db.Segments.AsNoTracking()
            .Join(db.Trials.Where(t => t.SweepId == sweepId), s => s.TrialId, t => t.Id, (s, _) => s)
            .ToListAsync(ct);
        List<EpochMetricRecord> metrics = await db.EpochMetrics.AsNoTracking()
            .Where(m => m.Split == "validation")
            .Join(db.Trials.Where(t => t.SweepId == sweepId), m => m.TrialId, t => t.Id, (m, _) => m)
            .ToListAsync(ct);
        string[] keys = [.. trials.SelectMany(FeatureKeysOf).Distinct(StringComparer.Ordinal)];
        List<FeatureSetRecord> sets = await db.FeatureSets.AsNoTracking().Where(f => keys.Contains(f.Key)).ToListAsync(ct);
        List<FeatureShardRecord> shards = await db.FeatureShards.AsNoTracking().Where(s => keys.Contains(s.FeatureSetKey)).ToListAsync(ct);
        DateTime? previous = await db.Sweeps.AsNoTracking().Where(s => s.CreatedAt < sweep.CreatedAt).MaxAsync(s => (DateTime?)s.CreatedAt, ct);
        return new SweepReportData
        {
            Sweep = sweep,
            Trials = trials,
            Segments = segments,
            ValidationMetrics = metrics,
            FeatureSets = sets,
            FeatureShards = shards,
            PreviousSweepCreatedAt = previous,
        };
    }
}
