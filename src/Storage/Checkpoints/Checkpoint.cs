using Cluster.Storage.Formats;

namespace Cluster.Storage.Checkpoints;

/// <summary>One tensor of a checkpoint: its name (e.g. "model/layer4.0.conv1.weight", "optimizer/0/exp_avg"), dtype, shape and little-endian bytes.</summary>
public sealed record CheckpointTensor(string Name, SafetensorsDtype Dtype, IReadOnlyList<long> Shape, ReadOnlyMemory<byte> Data);

/// <summary>
/// What the small JSON beside a checkpoint's safetensors says: which trial and segment wrote it, the epoch it ends
/// (the next segment resumes at epoch + 1), the validation metric then, the tensors' file and its SHA-256, and
/// free-form scalars (optimizer hyperparameters, the RNG's seed and offset). The checkpoint is good only when the
/// safetensors' bytes have that hash.
/// </summary>
public sealed record CheckpointInfo
{
    /// <summary>The version of this layout; a reader refuses a newer one.</summary>
    public int Format { get; init; } = 1;

    public required string SweepId { get; init; }

    public required string TrialId { get; init; }

    public required int Segment { get; init; }

    /// <summary>The last epoch completed (0-based) when the checkpoint was written.</summary>
    public required int Epoch { get; init; }

    /// <summary>The validation metric at <see cref="Epoch"/>, if one was measured.</summary>
    public double? Metric { get; init; }

    /// <summary>The safetensors file, relative to the storage root.</summary>
    public string TensorsPath { get; init; } = "";

    /// <summary>SHA-256 (lowercase hex) of the safetensors file's bytes.</summary>
    public string Sha256 { get; init; } = "";

    public long Bytes { get; init; }

    public DateTime WrittenAt { get; init; }

    /// <summary>Scalars the trainer needs to resume (optimizer step, RNG state, schedule position), by name.</summary>
    public IReadOnlyDictionary<string, string> State { get; init; } = new Dictionary<string, string>();
}

/// <summary>A checkpoint read back and verified: its description and its tensors.</summary>
public sealed record LoadedCheckpoint(CheckpointInfo Info, IReadOnlyList<CheckpointTensor> Tensors)
{
    public CheckpointTensor Tensor(string name) =>
        Tensors.FirstOrDefault(t => t.Name == name)
        ?? throw new KeyNotFoundException($"checkpoint segment {Info.Segment} of trial {Info.TrialId} has no tensor '{name}'");
}

/// <summary>A checkpoint file set that was found but cannot be used, and why (torn write, corruption, wrong trial).</summary>
public sealed record RejectedCheckpoint(int Segment, string Reason);
