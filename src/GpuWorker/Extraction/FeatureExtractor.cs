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

/// <summary>A shard file on storage and the images it skipped: what <see cref="FeatureExtractor.RecordAsync"/> records.</summary>
internal sealed record WrittenShard(ExtractFeatures Job, string Path, string Sha256, IReadOnlyList<SkippedRow> Skipped);

/// <summary>
/// Extracts one shard: decodes its images in parallel (overlapping the forward pass), runs the backbone to the
/// tap, pools, writes `features/&lt;key&gt;/shard-NNNNN.safetensors` (features [n, ...] in the job's storage dtype,
/// float32 by default; rows [n] int64) atomically with its sha256, and records the shard and its skipped images in one
/// database write.
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
        await using ClusterDbContext db = await databases.CreateDbContextAsync(cancellationToken);
        FeatureShardRecord? done = await db.FeatureShards.AsNoTracking().SingleOrDefaultAsync(
            s => s.FeatureSetKey == job.FeatureSetKey && s.Index == job.ShardIndex && s.Status == FeatureShardStatus.Complete, cancellationToken);
        return done is null ? null : new ShardOutcome(done.ImageCount, done.SkippedCount, done.Seconds, AlreadyRecorded: true);
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
        FeatureStorageDtype storage = FeatureStorageDtype.Parse(job.StorageDtype);
        Preprocessing preprocessing = PreprocessingFor(architecture, job.InputSize);
        int side = preprocessing.InputSize;
        // Checked for this shard's batch sizes (at the input size it will run) on the lanes' threads; a batch
        // shortened by skipped images is checked when it comes.
        var plan = new KernelPlan(side, KernelPlan.BatchSizesFor(job.RowCount, job.BatchSize), lanes.Layout.ThreadsPerLane, job.Layer);
        InferenceModel model = models.Get(new ModelRequest(job.Model, job.WeightsPath, job.WeightsHash, job.Precision), plan);
        string[] paths = manifest.Entries.Skip((int)job.RowStart).Take(job.RowCount).Select(e => e.Path).ToArray();

        ImageBatchPipeline pipeline = PipelineFor(preprocessing, job.BatchSize, manifest.Root);
        var skipped = new List<SkippedRow>();
        var output = new ShardFeatures(job.RowStart, job.RowCount);
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
                        Forward(batch, model, job, side, output);
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
        (float[] features, long[] rows, long[] featureShape) = output.Compact();
        int featureLength = (int)featureShape.Aggregate(1L, (a, b) => a * b);

        string path = ShardPath(job.FeatureSetKey, job.ShardIndex);
        var metadata = new Dictionary<string, string>
        {
            ["feature_set"] = job.FeatureSetKey,
            ["shard"] = job.ShardIndex.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["model"] = job.Model,
            ["layer"] = job.Layer,
            ["pooling"] = job.Pooling,
            ["preprocessing"] = preprocessing.Name,
            ["input_size"] = side.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["dtype"] = storage.RecordName,
        };
        string sha256 = await store.WriteWithSha256Async(path, (stream, ct) =>
        {
            WriteShard(stream, storage, features.AsMemory(0, rows.Length * featureLength), rows, featureShape, metadata);
            return Task.CompletedTask;
        }, cancellationToken);
        double seconds = clock.Elapsed.TotalSeconds;
        return new ShardOutcome(rows.Length, skipped.Count, seconds, AlreadyRecorded: false) { Written = new WrittenShard(job, path, sha256, skipped) };
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

    /// <summary>One batch through the backbone to the tap (on a lane thread), its features stored at its rows.</summary>
    private void Forward(ImageBatch batch, InferenceModel model, ExtractFeatures job, int side, ShardFeatures output)
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
        Tensor result = model.ForwardTo(input, job.Layer);
        if (job.Pooling == "avg" && result.dim() == 4)
        {
            result = result.mean([2, 3]);
        }
        result = result.to(ScalarType.Float32).cpu().contiguous();
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

    /// <summary>Records a shard that could not be extracted, with the reason, so the requester can say why.</summary>
    public async Task RecordFailureAsync(ExtractFeatures job, string reason)
    {
        await using ClusterDbContext db = await databases.CreateDbContextAsync(CancellationToken.None);
        FeatureShardRecord? row = await db.FeatureShards.FindAsync([job.FeatureSetKey, job.ShardIndex]);
        if (row is { Status: FeatureShardStatus.Complete })
        {
            return;
        }
        if (row is null)
        {
            row = new FeatureShardRecord { FeatureSetKey = job.FeatureSetKey, Index = job.ShardIndex, Path = "", Sha256 = "" };
            db.FeatureShards.Add(row);
        }
        row.Status = FeatureShardStatus.Failed;
        row.FailureReason = reason;
        row.WorkerId = identity.WorkerId;
        row.CreatedAt = DateTime.UtcNow;
        await db.SaveChangesAsync(CancellationToken.None);
    }

    /// <summary>
    /// One transaction: the shard row (replacing a failed attempt) and its skipped images not yet known. A lost race with
    /// another delivery of the shard surfaces as a <see cref="DbUpdateException"/> (the job runner checks who won).
    /// </summary>
    public async Task RecordAsync(ShardOutcome outcome)
    {
        WrittenShard written = outcome.Written ?? throw new InvalidOperationException("this shard outcome was read back, not extracted: nothing to record");
        (ExtractFeatures job, string path, string sha256, IReadOnlyList<SkippedRow> skipped) = written;
        int images = outcome.ImageCount;
        double seconds = outcome.Seconds;
        await using ClusterDbContext db = await databases.CreateDbContextAsync(CancellationToken.None);
        FeatureShardRecord? row = await db.FeatureShards.FindAsync([job.FeatureSetKey, job.ShardIndex]);
        if (row is null)
        {
            row = new FeatureShardRecord { FeatureSetKey = job.FeatureSetKey, Index = job.ShardIndex, Path = path, Sha256 = sha256 };
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
        row.Seconds = seconds;
        row.CreatedAt = DateTime.UtcNow;

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
        logger.LogInformation("Shard {Shard} of {FeatureSet}: {Images} images, {Skipped} skipped, in {Seconds:F1} s ({Rate:F1} images/s); resident {ResidentMiB} MiB, managed heap {ManagedMiB} MiB",
            job.ShardIndex, job.FeatureSetKey, images, skipped.Count, seconds, (images + skipped.Count) / Math.Max(seconds, 1e-3),
            Environment.WorkingSet >> 20, GC.GetGCMemoryInfo().HeapSizeBytes >> 20);
    }
}
