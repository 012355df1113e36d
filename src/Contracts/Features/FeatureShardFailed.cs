namespace Cluster.Contracts.Features;

/// <summary>Worker → coordinator: a shard could not be extracted (bad model, layer or weights): the reason, for the user.</summary>
public sealed record FeatureShardFailed
{
    public required string FeatureSetKey { get; init; }
    public required int ShardIndex { get; init; }
    public required string WorkerId { get; init; }
    public required string Reason { get; init; }
}
