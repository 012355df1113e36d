using System.Buffers;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Cluster.Contracts.Features;
using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Hosting;
using Cluster.GpuWorker.Images;
using Cluster.GpuWorker.Models;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Datasets;
using Cluster.Storage.Files;
using Cluster.Storage.Formats;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Extraction;

/// <summary>The outcome of one shard: as recorded, or as just extracted (then <see cref="Written"/> says what to record).</summary>
public sealed record ShardOutcome(int ImageCount, int SkippedCount, double Seconds, bool AlreadyRecorded)
{
    /// <summary>The shard file written and the images skipped, not yet recorded; null for an outcome read back.</summary>
    internal WrittenShard? Written { get; init; }
}

/// <summary>The shard files on storage (one per tap) and the images skipped: what <see cref="FeatureExtractor.RecordAsync"/> records.</summary>
internal sealed record WrittenShard(ExtractFeatures Job, IReadOnlyList<WrittenTap> Files, IReadOnlyList<SkippedRow> Skipped);

/// <summary>One tap's shard file.</summary>
internal sealed record WrittenTap(ExtractionTap Tap, string Path, string Sha256);

/// <summary>
/// Extracts one shard: decodes its images in parallel (overlapping the forward pass), runs the backbone once to the
/// deepest of the job's taps, pools each, writes `features/&lt;key&gt;/shard-NNNNN.safetensors` per tap (features [n, ...]
/// in the tap's storage dtype, float32 by default; rows [n] int64) atomically with its sha256, and records the shards
/// and the skipped images in one database write.
/// </summary>
public sealed class FeatureExtractor(
    FileStore store,
    IDbContextFactory<ClusterDbContext> databases,
    ModelProvider models,
    DatasetManifestCache manifests,
    TorchDevice device,
    ForwardLanes lanes,
    WorkerIdentity identity,
    JobTracker jobs,
    ILogger<FeatureExtractor> logger)
{
    private readonly object _pipelineGate = new();
    private ImageBatchPipeline? _pipeline;

    public static string ShardPath(string featureSetKey, int shardIndex) => $"features/{featureSetKey}/shard-{shardIndex:D5}.safetensors";

    /// <summary>The shard's recorded outcome if a delivery of it completed before, else null.</summary>
    public async Task<ShardOutcome?> FindRecordedAsync(ExtractFeatures job, CancellationToken cancellationToken)
    {
        // Recorded only when every tap's shard is: one transaction records them all, so a pass is found whole or not at
        // all (a set recorded by an earlier job of its own is simply written again, to the same content).
        var keys = job.AllTaps().Select(t => t.FeatureSetKey).Distinct().ToList();
        await using ClusterDbContext db = await databases.CreateDbContextAsync(cancellationToken);
        List<FeatureShardRecord> done = await db.FeatureShards.AsNoTracking()
            .Where(s => keys.Contains(s.FeatureSetKey) && s.Index == job.ShardIndex && s.Status == FeatureShardStatus.Complete)
            .ToListAsync(cancellationToken);
        if (done.Count < keys.Count)
        {
            return null;
        }
        FeatureShardRecord first = done.Single(s => s.FeatureSetKey == job.FeatureSetKey);
        return new ShardOutcome(first.ImageCount, first.SkippedCount, first.Seconds, AlreadyRecorded: true);
    }

    /// <summary>Extracts the shard and writes its file; <see cref="RecordAsync"/> records it.</summary>
    public async Task<ShardOutcome> ExtractAsync(ExtractFeatures job, CancellationToken cancellationToken)
    {
        var clock = Stopwatch.StartNew();
        DatasetManifest manifest = await manifests.GetAsync(job.DatasetId, cancellationToken);
        if (job.RowStart < 0 || job.RowCount < 0 || job.RowStart + job.RowCount > manifest.Entries.Count)
        {
            throw new ArgumentException($"rows [{job.RowStart}, {job.RowStart + job.RowCount}) are outside dataset {job.DatasetId} ({manifest.Entries.Count} images)");
        }
        ArchitectureInfo architecture = ModelCatalog.Find(job.Model);
        IReadOnlyList<ExtractionTap> taps = job.AllTaps();
        FeatureStorageDtype[] storage = [.. taps.Select(t => FeatureStorageDtype.Parse(t.StorageDtype))];
        string[] layers = [.. taps.Select(t => t.Layer).Distinct(StringComparer.Ordinal)];
        Preprocessing preprocessing = PreprocessingFor(architecture, job.InputSize);
        int side = preprocessing.InputSize;
        // Checked for this shard's batch sizes (at the input size it will run) on the lanes' threads; a batch
        // shortened by skipped images is checked when it comes.
        var plan = new KernelPlan(side, KernelPlan.BatchSizesFor(job.RowCount, job.BatchSize), lanes.Layout.ThreadsPerLane, job.Layer);
        InferenceModel model = models.Get(new ModelRequest(job.Model, job.WeightsPath, job.WeightsHash, job.Precision), plan);
        foreach (string layer in layers.Skip(1))
        {
            // The convolutions on the way to the other taps (only those not checked yet: one of them is the deepest).
            model.EnsureVerified(plan with { Tap = layer });
        }
        string[] paths = manifest.Entries.Skip((int)job.RowStart).Take(job.RowCount).Select(e => e.Path).ToArray();

        ImageBatchPipeline pipeline = PipelineFor(preprocessing, job.BatchSize, manifest.Root);
        var skipped = new List<SkippedRow>();
        ShardFeatures[] outputs = [.. taps.Select(_ => new ShardFeatures(job.RowStart, job.RowCount))];
        var forwards = new List<Task>();
        int processed = 0;
        try
        {
            await foreach (ImageBatch batch in pipeline.RunAsync(paths, job.RowStart, cancellationToken))
            {
                skipped.AddRange(batch.Skipped);
                Interlocked.Add(ref processed, batch.Skipped.Count);
                if (batch.Count == 0)
                {
                    batch.Dispose();
                    continue;
                }
                // The batch goes to the next free lane, which disposes it (handing its buffer back to the decoders);
                // meanwhile this loop takes the next one. Results land at their rows, so lanes may finish in any order.
                forwards.Add(lanes.RunAsync(() =>
                {
                    using (batch)
                    {
                        cancellationToken.ThrowIfCancellationRequested();
                        Forward(batch, model, taps, layers, side, outputs);
                    }
                    jobs.ReportThroughput(Interlocked.Add(ref processed, batch.Count) / Math.Max(clock.Elapsed.TotalSeconds, 1e-3));
                }));
                // A lane that failed stops the shard now, not after every other batch has been computed.
                if (forwards.Find(t => t.IsFaulted) is Task failed)
                {
                    await failed;
                }
                forwards.RemoveAll(t => t.IsCompletedSuccessfully);
            }
            await Task.WhenAll(forwards);
        }
        finally
        {
            // Leaving early (cancelled, a bad batch): lanes still holding batches of this shard finish first.
            await Task.WhenAll(forwards).ContinueWith(_ => { }, TaskScheduler.Default);
        }
        var files = new List<WrittenTap>(taps.Count);
        int imageCount = 0;
        for (int i = 0; i < taps.Count; i++)
        {
            ExtractionTap tap = taps[i];
            (float[] features, long[] rows, long[] featureShape) = outputs[i].Compact();
            outputs[i] = null!; // the shard's features may be large: let them go as soon as they are written
            int featureLength = (int)featureShape.Aggregate(1L, (a, b) => a * b);
            imageCount = rows.Length;
            string path = ShardPath(tap.FeatureSetKey, job.ShardIndex);
            var metadata = new Dictionary<string, string>
            {
                ["feature_set"] = tap.FeatureSetKey,
                ["shard"] = job.ShardIndex.ToString(System.Globalization.CultureInfo.InvariantCulture),
                ["model"] = job.Model,
                ["layer"] = tap.Layer,
                ["pooling"] = tap.Pooling,
                ["preprocessing"] = preprocessing.Name,
                ["input_size"] = side.ToString(System.Globalization.CultureInfo.InvariantCulture),
                ["dtype"] = storage[i].RecordName,
            };
            FeatureStorageDtype dtype = storage[i];
            string sha256 = await store.WriteWithSha256Async(path, (stream, ct) =>
            {
                WriteShard(stream, dtype, features.AsMemory(0, rows.Length * featureLength), rows, featureShape, metadata);
                return Task.CompletedTask;
            }, cancellationToken);
            files.Add(new WrittenTap(tap, path, sha256));
        }
        double seconds = clock.Elapsed.TotalSeconds;
        return new ShardOutcome(imageCount, skipped.Count, seconds, AlreadyRecorded: false) { Written = new WrittenShard(job, files, skipped) };
    }

    /// <summary>
    /// A shard file: "features" [rows, ..featureShape] in <paramref name="storage"/>'s dtype (rounded once, here, from
    /// the float32 features) and "rows" [rows] int64, the dataset row of each. What <see cref="FeatureSetReader"/> reads.
    /// </summary>
    internal static void WriteShard(
        Stream stream, FeatureStorageDtype storage, ReadOnlyMemory<float> features, long[] rows, long[] featureShape, IReadOnlyDictionary<string, string> metadata)
    {
        Safetensors.Write(stream,
        [
            new SafetensorsTensor("features", storage.Safetensors, [rows.Length, .. featureShape], storage.Encode(features.Span)),
            new SafetensorsTensor("rows", SafetensorsDtype.I64, [rows.Length], MemoryMarshal.AsBytes(rows.AsSpan()).ToArray()),
        ], metadata);
    }

    /// <summary>The architecture's preprocessing at the job's input size (its own when the job names none).</summary>
    public static Preprocessing PreprocessingFor(ArchitectureInfo architecture, int? inputSize)
    {
        ArgumentNullException.ThrowIfNull(architecture);
        if (inputSize is < 16 or > 1024)
        {
            throw new ArgumentException($"input size {inputSize} is outside 16..1024", nameof(inputSize));
        }
        return inputSize is int size ? architecture.Preprocessing.AtSize(size) : architecture.Preprocessing;
    }

    /// <summary>
    /// The decoding pipeline for consecutive shards of one feature set, kept with its batch buffers: lanes + 2 of
    /// them (one batch in each lane, one being decoded, one waiting), 19 MB each at 224 and batch 32. A new pipeline
    /// per shard left ~80 MB of large-object garbage per shard for the GC to find, and the managed heap swung by
    /// hundreds of MB over a long run.
    /// </summary>
    private ImageBatchPipeline PipelineFor(Preprocessing preprocessing, int batchSize, string root)
    {
        var options = new ImagePipelineOptions
        {
            BatchSize = batchSize,
            MaxBuffers = lanes.Layout.Lanes + 2,
            Decoder = new ImageDecoderOptions { Root = root },
        };
        lock (_pipelineGate)
        {
            // Compared by name, which identifies the values: AtSize builds a new (equal) preprocessing for every shard,
            // and a record holding arrays compares them by reference.
            if (_pipeline is null || _pipeline.Preprocessing.Name != preprocessing.Name || _pipeline.Options != options)
            {
                _pipeline = new ImageBatchPipeline(preprocessing, options);
            }
            return _pipeline;
        }
    }

    /// <summary>
    /// One batch through the backbone (on a lane thread), once to the deepest tap, each tap's features (pooled as that
    /// tap asks) stored at the batch's rows in that tap's output.
    /// </summary>
    private void Forward(ImageBatch batch, InferenceModel model, IReadOnlyList<ExtractionTap> taps, string[] layers, int side, ShardFeatures[] outputs)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        // A view over the batch's buffer, not a copy: the forward pass reads the decoded pixels in place (the buffer
        // goes back to the pipeline only after this scope has released the view).
        Tensor input = batch.AsTensor(side);
        if (device.IsCuda)
        {
            // GPU: stage in page-locked host memory so the host-to-device copy is asynchronous; the decoders
            // meanwhile fill the next batch. (Untested here: no CUDA build of TorchSharp in this environment.)
            input = input.pin_memory().to(device.Device, non_blocking: true);
        }
        input = model.PrepareInput(input);
        // One tap runs straight to it; several share one pass (the activations of the shallower ones kept on the way).
        Dictionary<string, Tensor> activations = layers.Length == 1
            ? new() { [layers[0]] = model.ForwardTo(input, layers[0]) }
            : model.ForwardTaps(input, layers);
        for (int i = 0; i < taps.Count; i++)
        {
            Tensor result = activations[taps[i].Layer];
            if (taps[i].Pooling == "avg" && result.dim() == 4)
            {
                result = result.mean([2, 3]);
            }
            Store(batch, result.to(ScalarType.Float32).cpu().contiguous(), outputs[i]);
        }
    }

    private static void Store(ImageBatch batch, Tensor result, ShardFeatures output)
    {
        // Staged through a pooled array: a batch's rows are not contiguous in the shard when some were skipped.
        int length = checked((int)result.numel());
        float[] staging = ArrayPool<float>.Shared.Rent(length);
        try
        {
            result.data<float>().CopyTo(staging.AsSpan(0, length));
            output.Store(batch.Rows, result.shape[1..], staging.AsSpan(0, length));
        }
        finally
        {
            ArrayPool<float>.Shared.Return(staging);
        }
    }

    /// <summary>Records a shard that could not be extracted (at every tap of the job not already complete), with the reason, so the requester can say why.</summary>
    public async Task RecordFailureAsync(ExtractFeatures job, string reason)
    {
        await using ClusterDbContext db = await databases.CreateDbContextAsync(CancellationToken.None);
        await JobFailures.RecordShardAsync(db, job, identity.WorkerId, reason, CancellationToken.None);
    }

    /// <summary>
    /// One transaction: the shard's row for each tap (replacing a failed attempt) and its skipped images not yet known. A lost race with
    /// another delivery of the shard surfaces as a <see cref="DbUpdateException"/> (the job runner checks who won).
    /// </summary>
    public async Task RecordAsync(ShardOutcome outcome)
    {
        WrittenShard written = outcome.Written ?? throw new InvalidOperationException("this shard outcome was read back, not extracted: nothing to record");
        (ExtractFeatures job, IReadOnlyList<WrittenTap> files, IReadOnlyList<SkippedRow> skipped) = written;
        int images = outcome.ImageCount;
        double seconds = outcome.Seconds;
        await using ClusterDbContext db = await databases.CreateDbContextAsync(CancellationToken.None);
        foreach ((ExtractionTap tap, string path, string sha256) in files)
        {
            FeatureShardRecord? row = await db.FeatureShards.FindAsync([tap.FeatureSetKey, job.ShardIndex]);
            if (row is null)
            {
                row = new FeatureShardRecord { FeatureSetKey = tap.FeatureSetKey, Index = job.ShardIndex, Path = path, Sha256 = sha256 };
                db.FeatureShards.Add(row);
            }
            row.Status = FeatureShardStatus.Complete;
            row.FailureReason = null;
            row.Path = path;
            row.Sha256 = sha256;
            row.RowStart = job.RowStart;
            row.RowCount = job.RowCount;
            row.ImageCount = images;
            row.SkippedCount = skipped.Count;
            row.WorkerId = identity.WorkerId;
            // The pass's time, shared by its taps: each set's row says what computing it (with the others) took.
            row.Seconds = seconds;
            row.CreatedAt = DateTime.UtcNow;
        }

        if (skipped.Count > 0)
        {
            var skippedPaths = skipped.Select(s => s.Image.Path).ToList();
            var known = (await db.SkippedImages.AsNoTracking()
                .Where(s => s.DatasetId == job.DatasetId && skippedPaths.Contains(s.Path))
                .Select(s => s.Path).ToListAsync()).ToHashSet(StringComparer.Ordinal);
            foreach (SkippedRow s in skipped.Where(s => !known.Contains(s.Image.Path)))
            {
                db.SkippedImages.Add(new SkippedImageRecord
                {
                    DatasetId = job.DatasetId,
                    Path = s.Image.Path,
                    Reason = $"{s.Image.Reason.Code()}: {s.Image.Message}",
                    RecordedAt = DateTime.UtcNow,
                });
            }
        }
        await db.SaveChangesAsync(CancellationToken.None);
        NativeHeap.ReleaseFreedMemory();
        // Resident and managed memory after every shard: the figures that show a long extraction stays flat.
        logger.LogInformation("Shard {Shard} of {FeatureSet} ({Taps} tap(s) in one pass): {Images} images, {Skipped} skipped, in {Seconds:F1} s ({Rate:F1} images/s); resident {ResidentMiB} MiB, managed heap {ManagedMiB} MiB",
            job.ShardIndex, job.FeatureSetKey, files.Count, images, skipped.Count, seconds, (images + skipped.Count) / Math.Max(seconds, 1e-3),
            Environment.WorkingSet >> 20, GC.GetGCMemoryInfo().HeapSizeBytes >> 20);
    }
}
