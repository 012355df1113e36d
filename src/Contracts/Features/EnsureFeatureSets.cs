namespace Cluster.Contracts.Features;

/// <summary>
/// CLI → the coordinator service: make sure of several feature sets at once (a sweep's distinct frozen prefixes). Each
/// is planned as an <see cref="EnsureFeatureSet"/> would be; then the sets one pass over the images can compute (same
/// dataset, model, weights, preprocessing, precision, batch and shard size, scope; only the tap, pooling or storage
/// dtype differ) get each shard in one <see cref="ExtractFeatures"/> job carrying all their taps, so the images are
/// decoded and the backbone run once, not once per set.
/// </summary>
public sealed record EnsureFeatureSets
{
    public required IReadOnlyList<EnsureFeatureSet> Sets { get; init; }

    /// <summary>
    /// The sweep's storage budget (`budget.storage`), null for none. Before sending any shard, the service evicts the
    /// feature sets no running sweep needs, least recently used first, until what is stored plus <see cref="NewBytes"/>
    /// fits in it.
    /// </summary>
    public long? StorageBudgetBytes { get; init; }

    /// <summary>Bytes the sets still to extract will add to the storage (the planner's estimate).</summary>
    public long NewBytes { get; init; }

    /// <summary>Keys of stored sets the sweep also uses (complete ones, which need no extraction): marked used, never evicted for it.</summary>
    public IReadOnlyList<string> Uses { get; init; } = [];
}
