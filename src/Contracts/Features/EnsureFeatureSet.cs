namespace Cluster.Contracts.Features;

/// <summary>
/// CLI → the coordinator service: make sure of one feature set (everything its frozen-prefix key is made of). The
/// service plans it (the cache, a partial set resumed, or a new one), sends the shards still missing to the workers,
/// and marks it complete when their <see cref="FeatureShardExtracted"/> events have all arrived, whether or not the
/// asking CLI is still there. Asking again for a set being extracted sends only its missing shards again (idempotent).
/// </summary>
public sealed record EnsureFeatureSet
{
    /// <summary>The dataset's id; its manifest is at datasets/&lt;id&gt;/ under the storage root, saved by the CLI's scan.</summary>
    public required string DatasetId { get; init; }

    public required string Model { get; init; }

    /// <summary>The tap's canonical step name.</summary>
    public required string Layer { get; init; }

    /// <summary>avg | none.</summary>
    public required string Pooling { get; init; }

    /// <summary>The preprocessing's name (its input size included).</summary>
    public required string Preprocessing { get; init; }

    /// <summary>fp32 | bf16: how the prefix runs.</summary>
    public required string Precision { get; init; }

    public required string WeightsHash { get; init; }

    /// <summary>A staged weights file relative to the storage root; null for builtin or random weights.</summary>
    public string? WeightsPath { get; init; }

    public required int ShardSize { get; init; }

    public required int BatchSize { get; init; }

    /// <summary>The input side when not the model's native one.</summary>
    public int? InputSize { get; init; }

    /// <summary>fp32 | bf16 | fp16: how the activations are stored.</summary>
    public string StorageDtype { get; init; } = "fp32";

    /// <summary>Null for a set anyone may reuse; a trial's id for one only that trial uses (`--no-share`).</summary>
    public string? Scope { get; init; }

    /// <summary>
    /// The job that extracts shard <paramref name="shardIndex"/> (rows [<paramref name="rowStart"/>, +<paramref name="rowCount"/>))
    /// of this set, known by <paramref name="featureSetKey"/>: what the service sends, and what a worker that finds the
    /// shard's file damaged runs again itself.
    /// </summary>
    public ExtractFeatures ShardJob(string featureSetKey, int shardIndex, long rowStart, int rowCount) => new()
    {
        FeatureSetKey = featureSetKey,
        ShardIndex = shardIndex,
        DatasetId = DatasetId,
        RowStart = rowStart,
        RowCount = rowCount,
        Model = Model,
        WeightsPath = WeightsPath,
        WeightsHash = WeightsHash,
        Layer = Layer,
        Pooling = Pooling,
        Precision = Precision,
        BatchSize = BatchSize,
        InputSize = InputSize,
        StorageDtype = StorageDtype,
    };
}
