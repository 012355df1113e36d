using Cluster.Contracts.Features;
using Cluster.Contracts.Training;
using Cluster.Storage.Database.Entities;
using Microsoft.EntityFrameworkCore;

namespace Cluster.Storage.Database;

/// <summary>
/// The rows a job that could not be done leaves, with its reason: written by the worker that failed it, and by the
/// coordinator for a job that reached the error queue (no worker could even record its failure). A completed row is never
/// overwritten: a late failure of a job that another delivery finished changes nothing.
/// </summary>
public static class JobFailures
{
    /// <summary>The shard failed at every tap of the job not already complete (one row per feature set it feeds); returns
    /// the feature sets whose shard it failed.</summary>
    public static async Task<IReadOnlyList<string>> RecordShardAsync(ClusterDbContext db, ExtractFeatures job, string workerId, string reason, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(db);
        ArgumentNullException.ThrowIfNull(job);
        var failed = new List<string>();
        foreach (string key in job.AllTaps().Select(t => t.FeatureSetKey).Distinct())
        {
            FeatureShardRecord? row = await db.FeatureShards.FindAsync([key, job.ShardIndex], cancellationToken);
            if (row is { Status: FeatureShardStatus.Complete })
            {
                continue;
            }
            if (row is null)
            {
                row = new FeatureShardRecord { FeatureSetKey = key, Index = job.ShardIndex, Path = "", Sha256 = "" };
                db.FeatureShards.Add(row);
            }
            row.Status = FeatureShardStatus.Failed;
            row.FailureReason = reason;
            row.WorkerId = workerId;
            row.CreatedAt = DateTime.UtcNow;
            failed.Add(key);
        }
        await db.SaveChangesAsync(cancellationToken);
        return failed;
    }

    /// <summary>The segment failed (one more attempt counted), unless it is recorded complete.</summary>
    public static async Task RecordSegmentAsync(ClusterDbContext db, TrainSegment job, string workerId, string reason, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(db);
        ArgumentNullException.ThrowIfNull(job);
        SegmentRecord? segment = await db.Segments.SingleOrDefaultAsync(s => s.TrialId == job.TrialId && s.Index == job.Segment, cancellationToken);
        if (segment is null)
        {
            segment = new SegmentRecord { TrialId = job.TrialId, Index = job.Segment, EpochFrom = job.EpochFrom, EpochTo = job.EpochTo };
            db.Segments.Add(segment);
        }
        if (segment.Status == SegmentStatus.Completed)
        {
            return;
        }
        segment.Status = SegmentStatus.Failed;
        segment.Attempts++;
        segment.WorkerId = workerId;
        segment.FailureReason = reason;
        await db.SaveChangesAsync(cancellationToken);
    }
}
