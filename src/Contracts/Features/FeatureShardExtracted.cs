namespace Cluster.Contracts.Features;

/// <summary>Worker → coordinator: a shard's features are written and recorded (also sent again for a shard found already done).</summary>
public sealed record FeatureShardExtracted
{
    public required string FeatureSetKey { get; init; }
    public required int ShardIndex { get; init; }
    public required string WorkerId { get; init; }
    public required int ImageCount { get; init; }
    public required int SkippedCount { get; init; }
    public required double Seconds { get; init; }
}
