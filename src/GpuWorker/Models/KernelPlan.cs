using Cluster.GpuWorker.Kernels;

namespace Cluster.GpuWorker.Models;

/// <summary>
/// What the convolutions of a prepared model will be checked for: its input size, the batch sizes it will run (a
/// shard's full batches and its last, shorter one), the libtorch threads of the lane that runs it, and how far it runs.
/// </summary>
/// <param name="Tap">The tap the model will run to (null: the whole network); only the convolutions on the way are checked now.</param>
/// <param name="Pass">Forward alone (inference), or forward and backward (training).</param>
public sealed record KernelPlan(int InputSize, IReadOnlyCollection<long> BatchSizes, int Threads, string? Tap = null, KernelPass Pass = KernelPass.Forward)
{
    /// <summary>Full batches of <paramref name="batchSize"/> and, when <paramref name="rows"/> leaves one, the shorter last batch.</summary>
    public static IReadOnlyCollection<long> BatchSizesFor(long rows, long batchSize) =>
        rows % batchSize == 0 || rows < batchSize ? [Math.Min(rows, batchSize)] : [batchSize, rows % batchSize];
}
