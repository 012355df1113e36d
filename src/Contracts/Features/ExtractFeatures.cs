namespace Cluster.Contracts.Features;

/// <summary>
/// Coordinator → a GPU worker: extract the features of one shard (a contiguous row range of a dataset's manifest)
/// at one tap, and write them to <c>features/&lt;FeatureSetKey&gt;/shard-&lt;ShardIndex&gt;.safetensors</c>.
/// (FeatureSetKey, ShardIndex) identifies the work: a shard already recorded is not extracted again. With
/// <see cref="MoreTaps"/> the same pass also writes the same shard of other feature sets, one per tap.
/// </summary>
public sealed record ExtractFeatures : IVersionedJob
{
    /// <summary>The <see cref="ContractVersion"/> the sender wrote (a worker refuses one it does not read).</summary>
    public int Version { get; init; } = ContractVersion.Current;

    public required string FeatureSetKey { get; init; }
    public required int ShardIndex { get; init; }
    /// <summary>The dataset (its manifest lives at datasets/&lt;DatasetId&gt;/ under the storage root).</summary>
    public required string DatasetId { get; init; }

    public required long RowStart { get; init; }
    public required int RowCount { get; init; }

    /// <summary>An architecture name from the model catalog.</summary>
    public required string Model { get; init; }

    /// <summary>Weights file relative to the storage root; null for the architecture's own (built-in or seeded random) weights.</summary>
    public string? WeightsPath { get; init; }

    /// <summary>Identifies the weights: sha256 of the weights file, "builtin:NAME" or "random:SEED".</summary>
    public required string WeightsHash { get; init; }

    public required string Layer { get; init; }

    /// <summary>"avg" (global average over the spatial dimensions) or "none".</summary>
    public required string Pooling { get; init; }

    /// <summary>"fp32" or "bf16".</summary>
    public required string Precision { get; init; }

    public int BatchSize { get; init; } = 32;

    /// <summary>The square input side the images are resized and cropped to; null for the architecture's native size.</summary>
    public int? InputSize { get; init; }

    /// <summary>
    /// How the shard's features are stored: "fp32", or "bf16" / "fp16" (half the bytes, rounded to nearest even from the
    /// float32 features). Independent of <see cref="Precision"/>, which is how they are computed.
    /// </summary>
    public string StorageDtype { get; init; } = "fp32";

    /// <summary>
    /// Further feature sets computed in the same pass over the shard's images: each has the same rows, model, weights,
    /// preprocessing and precision, and its own tap, pooling and storage dtype (and its own shard file and row). Empty for
    /// a job of one set.
    /// </summary>
    public IReadOnlyList<ExtractionTap> MoreTaps { get; init; } = [];

    /// <summary>Every tap the job writes: its own first, then <see cref="MoreTaps"/>.</summary>
    public IReadOnlyList<ExtractionTap> AllTaps() =>
        [new ExtractionTap { FeatureSetKey = FeatureSetKey, Layer = Layer, Pooling = Pooling, StorageDtype = StorageDtype }, .. MoreTaps];
}

/// <summary>One feature set an <see cref="ExtractFeatures"/> pass writes: where, at which tap, pooled how, stored how.</summary>
public sealed record ExtractionTap
{
    public required string FeatureSetKey { get; init; }
    public required string Layer { get; init; }
    public required string Pooling { get; init; }
    public string StorageDtype { get; init; } = "fp32";
}
