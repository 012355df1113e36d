using System.Text.Json;
using Cluster.Contracts.Features;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Files;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace Cluster.GpuWorker.Extraction;

/// <summary>
/// Loads a feature set for training, and heals it on the way: a shard whose file is damaged or gone
/// (<see cref="DamagedFeatureShardException"/>) is extracted again by this worker, from the request the set was planned
/// from, its row replaced with the new file's hash, and the set read again. The damaged bytes are never used, and the
/// trial that needed them trains as if nothing had happened instead of failing. A shard found damaged again right
/// after its repair is not repaired twice: the read then fails with the reason (a volume that corrupts what it is given
/// is not something a retry fixes).
/// </summary>
/// <remarks>
/// Two workers that find the same shard damaged both extract it; each write is an atomic rename and each records its
/// own file's hash, so the last to record may name the other's file: the next read finds that and repairs it again,
/// at worst, and since extraction is deterministic on one machine the two files are usually the same bytes.
/// </remarks>
public sealed class FeatureShardRepair(
    ClusterDbContextFactory databases, FileStore store, FeatureExtractor extractor, ILogger<FeatureShardRepair> logger)
{
    public async Task<CachedFeatures> LoadAsync(string featureSetKey, CancellationToken ct)
    {
        var repaired = new HashSet<int>();
        while (true)
        {
            try
            {
                return await FeatureSetReader.LoadAsync(databases, store, featureSetKey, ct);
            }
            catch (DamagedFeatureShardException damaged) when (damaged.FeatureSetKey == featureSetKey && repaired.Add(damaged.ShardIndex))
            {
                await ExtractAgainAsync(damaged, ct);
            }
        }
    }

    private async Task ExtractAgainAsync(DamagedFeatureShardException damaged, CancellationToken ct)
    {
        FeatureSetRecord set;
        FeatureShardRecord shard;
        await using (ClusterDbContext db = databases.CreateDbContext())
        {
            set = await db.FeatureSets.AsNoTracking().SingleAsync(s => s.Key == damaged.FeatureSetKey, ct);
            shard = await db.FeatureShards.AsNoTracking().SingleAsync(s => s.FeatureSetKey == damaged.FeatureSetKey && s.Index == damaged.ShardIndex, ct);
        }
        EnsureFeatureSet request = (set.Request is null ? null : JsonSerializer.Deserialize<EnsureFeatureSet>(set.Request))
            ?? throw new InvalidDataException(
                $"{damaged.Message}; the set was planned before its request was recorded, so no worker can extract the shard again: ask for the set again with `coordinator extract`");
        logger.LogWarning("{Damage}: extracting shard {Shard} of feature set {FeatureSet} again instead of using it",
            damaged.Message, damaged.ShardIndex, damaged.FeatureSetKey);
        ExtractFeatures job = request.ShardJob(set.Key, shard.Index, shard.RowStart, shard.RowCount);
        ShardOutcome outcome = await extractor.ExtractAsync(job, ct);
        await extractor.RecordAsync(outcome);
        logger.LogInformation("Shard {Shard} of feature set {FeatureSet} extracted again: {Images} images in {Seconds:F1} s",
            shard.Index, set.Key, outcome.ImageCount, outcome.Seconds);
    }
}
