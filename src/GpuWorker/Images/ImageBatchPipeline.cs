using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Cluster.GpuWorker.Models;
using Cluster.Storage.Datasets;

namespace Cluster.GpuWorker.Images;

/// <summary>How an <see cref="ImageBatchPipeline"/> runs.</summary>
public sealed record ImagePipelineOptions
{
    /// <summary>Input rows per batch; a batch holds fewer images when some of its rows are skipped.</summary>
    public int BatchSize { get; init; } = 32;

    /// <summary>Images decoded at once; 0: one per core.</summary>
    public int Decoders { get; init; }

    /// <summary>
    /// Batch buffers that exist at most: those being filled, those waiting for the consumer, and those the consumer
    /// holds. Memory is this × BatchSize × 3 × InputSize² floats (19 MB per buffer for 32 images at 224), whatever
    /// the number of images. Four lets decoding run one batch ahead while the consumer works on another.
    /// </summary>
    public int MaxBuffers { get; init; } = 4;

    public ImageDecoderOptions Decoder { get; init; } = new();
}

/// <summary>
/// Decodes a list of images into batches, in parallel, while the consumer computes on earlier batches. Batches
/// arrive in order through a bounded channel; batch i holds the decoded images of input rows
/// [i × BatchSize, (i + 1) × BatchSize), packed at the front of its buffer, and lists the rows it skipped with their
/// reasons, so every row is accounted for exactly once.
/// </summary>
/// <remarks>
/// Decoders take images one at a time from a shared counter (not a batch each), so a batch fills at the speed of
/// all cores and only about one batch is in the making at any time. Buffers are handed out in batch order, which
/// keeps the pipeline live with any number of buffers: the batch that is next to be delivered always has one.
/// Runs may overlap; they then share the buffers.
/// </remarks>
public sealed class ImageBatchPipeline
{
    private readonly BatchBufferPool _pool;

    public ImageBatchPipeline(Preprocessing preprocessing, ImagePipelineOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(preprocessing);
        Options = options ?? new ImagePipelineOptions();
        ArgumentOutOfRangeException.ThrowIfLessThan(Options.BatchSize, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(Options.Decoders);
        ArgumentOutOfRangeException.ThrowIfLessThan(Options.MaxBuffers, 1);
        Preprocessing = preprocessing;
        ImageLength = ImageDecoder.ImageLength(preprocessing);
        Decoders = Options.Decoders > 0 ? Options.Decoders : Environment.ProcessorCount;
        _pool = new BatchBufferPool(Options.MaxBuffers, checked(Options.BatchSize * ImageLength));
    }

    public Preprocessing Preprocessing { get; }

    public ImagePipelineOptions Options { get; }

    /// <summary>Floats per image.</summary>
    public int ImageLength { get; }

    /// <summary>Images decoded at once.</summary>
    public int Decoders { get; }

    /// <summary>How many batch buffers were ever allocated; never more than <see cref="ImagePipelineOptions.MaxBuffers"/>.</summary>
    public int BuffersCreated => _pool.Created;

    /// <summary>
    /// Decodes <paramref name="paths"/> (relative to <see cref="ImageDecoderOptions.Root"/> when set), the image at
    /// index i having row id <paramref name="firstRow"/> + i. Stopping the enumeration early, or cancelling, stops
    /// the decoders and returns every buffer not handed out.
    /// </summary>
    public async IAsyncEnumerable<ImageBatch> RunAsync(
        IReadOnlyList<string> paths,
        long firstRow = 0,
        [EnumeratorCancellation] CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(paths);
        var run = new Run(this, paths, firstRow);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var producing = run.ProduceAsync(stop);
        try
        {
            await foreach (var batch in run.Batches.Reader.ReadAllAsync(ct))
            {
                yield return batch;
            }

            await producing;
        }
        finally
        {
            await stop.CancelAsync();
            try
            {
                await producing;
            }
            catch (Exception)
            {
                // Already surfaced through the channel, or caused by the cancellation above.
            }

            run.ReturnUndelivered();
        }
    }

    /// <summary>The state of one pass over a list of paths.</summary>
    private sealed class Run(ImageBatchPipeline pipeline, IReadOnlyList<string> paths, long firstRow)
    {
        private readonly Slot?[] _slots = new Slot?[(int)((paths.Count + (long)pipeline.Options.BatchSize - 1) / pipeline.Options.BatchSize)];
        private long _nextImage;

        public Channel<ImageBatch> Batches { get; } = Channel.CreateBounded<ImageBatch>(
            new BoundedChannelOptions(pipeline.Options.MaxBuffers) { SingleWriter = true, SingleReader = true });

        public async Task ProduceAsync(CancellationTokenSource stop)
        {
            var ct = stop.Token;
            var tasks = new List<Task> { Guard(AllocateAsync(ct)), Guard(DeliverAsync(ct)) };
            for (var i = 0; i < pipeline.Decoders; i++)
            {
                tasks.Add(Guard(Task.Run(() => DecodeAsync(ct), ct)));
            }

            try
            {
                await Task.WhenAll(tasks);
                Batches.Writer.TryComplete();
            }
            catch (Exception e)
            {
                Batches.Writer.TryComplete(e);
                throw;
            }

            // One failing task stops the others, which would otherwise wait for a batch that never completes.
            async Task Guard(Task task)
            {
                try
                {
                    await task;
                }
                catch
                {
                    await stop.CancelAsync();
                    throw;
                }
            }
        }

        /// <summary>Buffers of batches that were filled (or being filled) but never delivered go back to the pool.</summary>
        public void ReturnUndelivered()
        {
            foreach (var slot in _slots)
            {
                if (slot is not null && slot.Buffer.Task.IsCompletedSuccessfully)
                {
                    pipeline._pool.Return(slot.Buffer.Task.Result);
                }
            }

            while (Batches.Reader.TryRead(out var batch))
            {
                batch.Dispose();
            }
        }

        private Slot SlotOf(int batch) =>
            LazyInitializer.EnsureInitialized(ref _slots[batch], () => new Slot(Math.Min(pipeline.Options.BatchSize, paths.Count - (batch * pipeline.Options.BatchSize))));

        // Strictly in batch order: the batch next in line for delivery is never left without a buffer.
        private async Task AllocateAsync(CancellationToken ct)
        {
            for (var batch = 0; batch < _slots.Length; batch++)
            {
                var buffer = await pipeline._pool.RentAsync(ct);
                if (!SlotOf(batch).Buffer.TrySetResult(buffer))
                {
                    pipeline._pool.Return(buffer);
                }
            }
        }

        private async Task DecodeAsync(CancellationToken ct)
        {
            var decoder = new ImageDecoder(pipeline.Options.Decoder);
            var batchSize = pipeline.Options.BatchSize;
            var length = pipeline.ImageLength;
            while (true)
            {
                // Checked here too: waiting for a buffer that is already there does not look at the token.
                ct.ThrowIfCancellationRequested();
                var image = Interlocked.Increment(ref _nextImage) - 1;
                if (image >= paths.Count)
                {
                    return;
                }

                var batch = (int)(image / batchSize);
                var position = (int)(image % batchSize);
                var slot = SlotOf(batch);
                var buffer = await slot.Buffer.Task.WaitAsync(ct);
                slot.Results[position] = DecodeOne(decoder, paths[(int)image], buffer.AsSpan(position * length, length));
                if (Interlocked.Decrement(ref slot.Remaining) == 0)
                {
                    slot.Done.TrySetResult();
                }
            }
        }

        private ImageDecodeResult DecodeOne(ImageDecoder decoder, string path, Span<float> destination)
        {
            try
            {
                return decoder.Decode(path, pipeline.Preprocessing, destination);
            }
            catch (Exception e) when (e is not (OutOfMemoryException or OperationCanceledException))
            {
                // The decoder turns every known kind of bad file into a reason; whatever still throws is recorded
                // against this one image rather than failing the hundred thousand others.
                return ImageDecodeResult.Skip(ImageSkipReason.Corrupt, $"decoding failed: {e.GetType().Name}: {e.Message}");
            }
        }

        private async Task DeliverAsync(CancellationToken ct)
        {
            var batchSize = pipeline.Options.BatchSize;
            var length = pipeline.ImageLength;
            for (var batch = 0; batch < _slots.Length; batch++)
            {
                var slot = SlotOf(batch);
                await slot.Done.Task.WaitAsync(ct);
                var buffer = await slot.Buffer.Task;
                var firstOfBatch = firstRow + ((long)batch * batchSize);
                var rows = new List<long>(slot.Results.Length);
                var skipped = new List<SkippedRow>();
                for (var position = 0; position < slot.Results.Length; position++)
                {
                    var result = slot.Results[position];
                    if (!result.IsOk)
                    {
                        skipped.Add(new SkippedRow(firstOfBatch + position, result.ToSkipped(paths[(batch * batchSize) + position])));
                        continue;
                    }

                    // Packed to the front: the images stay in row order and the first Count slots are the batch.
                    if (rows.Count != position)
                    {
                        buffer.AsSpan(position * length, length).CopyTo(buffer.AsSpan(rows.Count * length, length));
                    }

                    rows.Add(firstOfBatch + position);
                }

                // From here the batch owns the buffer; the slot no longer does.
                _slots[batch] = null;
                var delivered = new ImageBatch(batch, buffer, pipeline._pool, length, [.. rows], skipped);
                try
                {
                    await Batches.Writer.WriteAsync(delivered, ct);
                }
                catch
                {
                    delivered.Dispose();
                    throw;
                }
            }
        }
    }

    private sealed class Slot(int images)
    {
        public int Remaining = images;

        public TaskCompletionSource<float[]> Buffer { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public ImageDecodeResult[] Results { get; } = new ImageDecodeResult[images];
    }
}
