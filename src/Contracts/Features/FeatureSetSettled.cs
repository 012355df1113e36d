namespace Cluster.Contracts.Features;

/// <summary>
/// Coordinator service → itself (its scheduler): a feature set that trials may wait on is complete, or cannot complete
/// (a shard failed, with <see cref="Failure"/>). Trials waiting for their frozen prefix are then sent, or failed with the
/// reason; trials that need other sets go on waiting.
/// </summary>
public sealed record FeatureSetSettled
{
    public required string FeatureSetKey { get; init; }

    /// <summary>Null when the set is complete; otherwise why it cannot be (the first failed shard and its reason).</summary>
    public string? Failure { get; init; }
}
