namespace Cluster.GpuWorker.Extraction;

/// <summary>
/// A shard's file is not the one its row records: changed or damaged since it was extracted (its sha256 differs) or
/// gone. Its features are never used; <see cref="FeatureShardRepair"/> extracts the shard again.
/// </summary>
public sealed class DamagedFeatureShardException(string featureSetKey, int shardIndex, string message) : IOException(message)
{
    public string FeatureSetKey { get; } = featureSetKey;

    public int ShardIndex { get; } = shardIndex;
}
