namespace Cluster.Contracts.SelfTest;

/// <summary>
/// Coordinator → a GPU worker: run a small, deterministic TorchSharp convolution and record its result.
/// Proves the whole path: broker, worker process, libtorch, database.
/// </summary>
public sealed record RunSelfTest : IVersionedJob
{
    /// <summary>The <see cref="ContractVersion"/> the sender wrote (a worker refuses one it does not read).</summary>
    public int Version { get; init; } = ContractVersion.Current;

    /// <summary>Deterministic job id; a worker that finds a result already recorded for it does not recompute.</summary>
    public required Guid JobId { get; init; }

    /// <summary>Spatial size of the square input image.</summary>
    public int ImageSize { get; init; } = 32;

    /// <summary>How many convolution layers are applied in sequence (more makes the job longer).</summary>
    public int Layers { get; init; } = 4;
}
