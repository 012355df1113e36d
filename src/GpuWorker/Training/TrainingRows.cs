using System.Runtime.CompilerServices;
using Cluster.GpuWorker.Images;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Training;

/// <summary>One batch of training inputs (images or cached activations, float32 on the CPU) and their labels.</summary>
public sealed record TrainingBatch(Tensor Input, Tensor Labels) : IDisposable
{
    public int Count => (int)Labels.shape[0];

    public void Dispose()
    {
        Input.Dispose();
        Labels.Dispose();
    }
}

/// <summary>
/// The labelled rows of one split (train, validation or test), either as images decoded batch by batch or as activations
/// cached by the feature cache. A batch's tensors belong to the caller, who disposes them.
/// </summary>
public abstract class TrainingRows
{
    /// <summary>Rows in the split (a row that cannot be decoded is skipped in its batch, so an epoch may see fewer).</summary>
    public abstract int Count { get; }

    /// <summary>True when the inputs are images (the frozen prefix still has to run on them), false for cached activations.</summary>
    public abstract bool AreImages { get; }

    /// <summary>The rows in <paramref name="order"/> (positions in this split), or in their own order when null.</summary>
    public abstract IAsyncEnumerable<TrainingBatch> BatchesAsync(int[]? order, int batchSize, CancellationToken ct);
}

/// <summary>Images of a dataset decoded and preprocessed by the worker's pipeline (parallel decoders overlapped with the training step).</summary>
public sealed class ImageRows(ImageBatchPipeline pipeline, IReadOnlyList<string> paths, IReadOnlyList<int> labels) : TrainingRows
{
    public override int Count => paths.Count;

    public override bool AreImages => true;

    public override async IAsyncEnumerable<TrainingBatch> BatchesAsync(int[]? order, int batchSize, [EnumeratorCancellation] CancellationToken ct)
    {
        if (batchSize != pipeline.Options.BatchSize)
        {
            throw new ArgumentException($"batch size {batchSize} differs from the pipeline's {pipeline.Options.BatchSize}");
        }
        int[] positions = order ?? [.. Enumerable.Range(0, paths.Count)];
        string[] ordered = [.. positions.Select(p => paths[p])];
        int side = pipeline.Preprocessing.InputSize;
        await foreach (ImageBatch batch in pipeline.RunAsync(ordered, 0, ct))
        {
            using (batch)
            {
                if (batch.Count == 0)
                {
                    continue;
                }
                // Copied out of the pooled buffer, which goes back to the decoders when the batch is disposed.
                Tensor input = batch.AsTensor(side).clone();
                long[] rowLabels = [.. batch.Rows.Select(r => (long)labels[positions[r]])];
                yield return new TrainingBatch(input, tensor(rowLabels, ScalarType.Int64));
            }
        }
    }
}

/// <summary>
/// Activations cached at a tap: row i of the split is row <c>cachePositions[i]</c> of <paramref name="features"/>, with
/// label <c>labels[i]</c>. Batches come out as float32 whatever the stored dtype (bf16 or fp16 halve the memory only).
/// </summary>
public sealed class CachedRows(Extraction.CachedFeatures features, long[] cachePositions, IReadOnlyList<int> labels) : TrainingRows
{
    public override int Count => cachePositions.Length;

    public override bool AreImages => false;

    public override async IAsyncEnumerable<TrainingBatch> BatchesAsync(int[]? order, int batchSize, [EnumeratorCancellation] CancellationToken ct)
    {
        int[] positions = order ?? [.. Enumerable.Range(0, Count)];
        for (int start = 0; start < positions.Length; start += batchSize)
        {
            ct.ThrowIfCancellationRequested();
            int[] slice = positions[start..Math.Min(positions.Length, start + batchSize)];
            Tensor input = features.Take([.. slice.Select(p => cachePositions[p])]);
            yield return new TrainingBatch(input, tensor(slice.Select(p => (long)labels[p]).ToArray(), ScalarType.Int64));
        }
        await Task.CompletedTask;
    }
}
