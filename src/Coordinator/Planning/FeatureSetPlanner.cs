using System.Text.Json;
using Cluster.Contracts.Features;
using Cluster.GpuWorker.Extraction;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Datasets;
using Cluster.Storage.Files;
using Microsoft.EntityFrameworkCore;

namespace Cluster.Coordinator.Planning;

/// <summary>What a user asks for: the features of a dataset at one tap of one model.</summary>
/// <param name="Preprocessing">The name of the preprocessing at <paramref name="InputSize"/> (it says the size, so the key does).</param>
/// <param name="InputSize">The square input side; null for the architecture's native size.</param>
/// <param name="StorageDtype">fp32, bf16 or fp16: how the shards store the features.</param>
public sealed record ExtractionRequest(
    DatasetManifest Dataset,
    string Model,
    string Layer,
    string Pooling,
    string Preprocessing,
    string Precision,
    string WeightsHash,
    string? WeightsPath,
    int ShardSize,
    int BatchSize,
    int? InputSize = null,
    string StorageDtype = "fp32",
    string? Scope = null)
{
    public FrozenPrefixKey Key => new(Model, WeightsHash, Layer, Pooling, Preprocessing, Precision, Dataset.Id, StorageDtype, Scope);

    /// <summary>The request as the coordinator service receives it (the dataset by id: its manifest is in storage).</summary>
    public EnsureFeatureSet ToMessage() => new()
    {
        DatasetId = Dataset.Id, Model = Model, Layer = Layer, Pooling = Pooling, Preprocessing = Preprocessing, Precision = Precision,
        WeightsHash = WeightsHash, WeightsPath = WeightsPath, ShardSize = ShardSize, BatchSize = BatchSize, InputSize = InputSize,
        StorageDtype = StorageDtype, Scope = Scope,
    };

    /// <summary>The request a message names, with its dataset's manifest read from storage.</summary>
    public static async Task<ExtractionRequest> FromMessageAsync(EnsureFeatureSet message, FileStore store, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(message);
        DatasetManifest dataset = await DatasetManifest.LoadAsync(store, message.DatasetId, ct);
        return new ExtractionRequest(dataset, message.Model, message.Layer, message.Pooling, message.Preprocessing, message.Precision,
            message.WeightsHash, message.WeightsPath, message.ShardSize, message.BatchSize, message.InputSize, message.StorageDtype, message.Scope);
    }
}

/// <summary>The feature set, and the shard jobs still to send (none when it is complete: the cache answered).</summary>
public sealed record ExtractionPlan(FeatureSetRecord FeatureSet, IReadOnlyList<ExtractFeatures> Jobs)
{
    public bool IsCached => FeatureSet.Status == FeatureSetStatus.Complete;
}

/// <summary>Where a feature set stands, from the shards its workers recorded.</summary>
public sealed record FeatureSetProgress(int ShardsComplete, int ShardsFailed, int ImagesDone, int ImagesSkipped, IReadOnlyList<(int Shard, string Reason)> Failures);

/// <summary>
/// The feature cache: a feature set is identified by its <see cref="FrozenPrefixKey"/>. Asking for one that is
/// complete returns it at once; a partial one resumes (only shards not recorded as complete are sent); two
/// requests at once agree on one set (the key is the primary key; the loser of the insert reads the winner's row).
/// </summary>
public sealed class FeatureSetPlanner(ClusterDbContextFactory databases, FileStore store)
{
    public static string ManifestPath(string key) => $"features/{key}/manifest.json";

    public async Task<ExtractionPlan> PlanAsync(ExtractionRequest request, CancellationToken cancellationToken)
    {
        string key = request.Key.Value;
        await EnsureDatasetAsync(request.Dataset, cancellationToken);
        FeatureSetRecord set = await EnsureFeatureSetAsync(request, key, cancellationToken);
        if (set.Status == FeatureSetStatus.Complete)
        {
            return new ExtractionPlan(set, []);
        }
        HashSet<int> complete;
        await using (ClusterDbContext db = databases.CreateDbContext())
        {
            complete = (await db.FeatureShards.AsNoTracking()
                .Where(s => s.FeatureSetKey == key && s.Status == FeatureShardStatus.Complete)
                .Select(s => s.Index).ToListAsync(cancellationToken)).ToHashSet();
        }
        int images = request.Dataset.Entries.Count;
        EnsureFeatureSet message = request.ToMessage();
        var jobs = new List<ExtractFeatures>();
        for (int shard = 0; shard < set.ShardCount; shard++)
        {
            if (complete.Contains(shard))
            {
                continue;
            }
            long start = (long)shard * set.ShardSize;
            jobs.Add(message.ShardJob(key, shard, start, (int)Math.Min(set.ShardSize, images - start)));
        }
        return new ExtractionPlan(set, jobs);
    }

    public async Task<FeatureSetProgress> ProgressAsync(string key, CancellationToken cancellationToken)
    {
        await using ClusterDbContext db = databases.CreateDbContext();
        var shards = await db.FeatureShards.AsNoTracking().Where(s => s.FeatureSetKey == key)
            .Select(s => new { s.Index, s.Status, s.ImageCount, s.SkippedCount, s.FailureReason })
            .ToListAsync(cancellationToken);
        var complete = shards.Where(s => s.Status == FeatureShardStatus.Complete).ToList();
        var failed = shards.Where(s => s.Status == FeatureShardStatus.Failed).ToList();
        return new FeatureSetProgress(complete.Count, failed.Count, complete.Sum(s => s.ImageCount), complete.Sum(s => s.SkippedCount),
            failed.Select(f => (f.Index, f.FailureReason ?? "unknown")).ToList());
    }

    /// <summary>Marks the set complete and writes its manifest.json (what Python users read first).</summary>
    public async Task<FeatureSetRecord> CompleteAsync(ExtractionRequest request, string key, CancellationToken cancellationToken)
    {
        await using ClusterDbContext db = databases.CreateDbContext();
        FeatureSetRecord set = await db.FeatureSets.SingleAsync(s => s.Key == key, cancellationToken);
        var shards = await db.FeatureShards.AsNoTracking().Where(s => s.FeatureSetKey == key).OrderBy(s => s.Index).ToListAsync(cancellationToken);
        string shape = await ReadFeatureShapeAsync(shards);
        set.Status = FeatureSetStatus.Complete;
        set.ExtractedCount = shards.Sum(s => s.ImageCount);
        set.Shape = shape;
        set.CompletedAt ??= DateTime.UtcNow;
        var manifest = new
        {
            key,
            model = set.Model,
            weightsHash = set.WeightsHash,
            layer = set.Layer,
            pooling = set.Pooling,
            preprocessing = set.Preprocessing,
            precision = request.Precision,
            // The size the images were decoded at, the architecture's own when the request named none.
            inputSize = request.InputSize ?? Cluster.GpuWorker.Models.ModelCatalog.Find(set.Model).InputSize,
            dataset = set.DatasetId,
            dtype = set.Dtype,
            shape = shape.Split('x').Select(long.Parse).ToArray(),
            images = set.ImageCount,
            extracted = set.ExtractedCount,
            shards = shards.Select(s => new { index = s.Index, path = s.Path, sha256 = s.Sha256, rowStart = s.RowStart, rowCount = s.RowCount, images = s.ImageCount, skipped = s.SkippedCount }),
            format = $"safetensors: 'features' [n, ...] {set.Dtype} and 'rows' [n] int64 (row ids in datasets/<dataset>/manifest.tsv order)",
        };
        // The manifest first, then the row: whoever sees the set complete finds its manifest (a crash in between leaves
        // the set extracting, and completing it again rewrites the same manifest).
        await store.WriteAllBytesAsync(ManifestPath(key), JsonSerializer.SerializeToUtf8Bytes(manifest, new JsonSerializerOptions { WriteIndented = true }), cancellationToken);
        await db.SaveChangesAsync(cancellationToken);
        return set;
    }

    private async Task<string> ReadFeatureShapeAsync(List<FeatureShardRecord> shards)
    {
        foreach (FeatureShardRecord shard in shards.Where(s => s.ImageCount > 0))
        {
            await using Stream stream = store.OpenRead(shard.Path);
            using var reader = new Cluster.Storage.Formats.SafetensorsReader(stream, shard.Path);
            return string.Join('x', reader.GetTensor("features").Shape.Skip(1));
        }
        return "0";
    }

    private async Task EnsureDatasetAsync(DatasetManifest dataset, CancellationToken cancellationToken)
    {
        await using ClusterDbContext db = databases.CreateDbContext();
        if (await db.Datasets.AnyAsync(d => d.Id == dataset.Id, cancellationToken))
        {
            return;
        }
        db.Datasets.Add(new DatasetRecord
        {
            Id = dataset.Id,
            Root = dataset.Root,
            ManifestPath = $"{dataset.Directory}/{DatasetManifest.ManifestFileName}",
            ContentHash = dataset.ContentSha256,
            ImageCount = dataset.Entries.Count,
            ClassCount = dataset.Classes.Count,
            CreatedAt = DateTime.UtcNow,
        });
        // Files the scan could not use are recorded with the images the decoders will skip: one list per dataset.
        foreach (SkippedImage skipped in dataset.Skipped)
        {
            db.SkippedImages.Add(new SkippedImageRecord
            {
                DatasetId = dataset.Id,
                Path = skipped.Path,
                Reason = $"{skipped.Reason.Code()}: {skipped.Message}",
                RecordedAt = DateTime.UtcNow,
            });
        }
        try
        {
            await db.SaveChangesAsync(cancellationToken);
        }
        catch (DbUpdateException)
        {
            // Registered concurrently by another request for the same files: same id, same content.
        }
    }

    private async Task<FeatureSetRecord> EnsureFeatureSetAsync(ExtractionRequest request, string key, CancellationToken cancellationToken)
    {
        await using (ClusterDbContext db = databases.CreateDbContext())
        {
            FeatureSetRecord? existing = await db.FeatureSets.AsNoTracking().SingleOrDefaultAsync(s => s.Key == key, cancellationToken);
            if (existing is not null)
            {
                return existing;
            }
            int images = request.Dataset.Entries.Count;
            db.FeatureSets.Add(new FeatureSetRecord
            {
                Key = key,
                Model = request.Model,
                WeightsHash = request.WeightsHash,
                Layer = request.Layer,
                Pooling = request.Pooling,
                Preprocessing = request.Preprocessing,
                DatasetId = request.Dataset.Id,
                Dtype = FeatureStorageDtype.Parse(request.StorageDtype).RecordName,
                Shape = "",
                Status = FeatureSetStatus.Extracting,
                ShardSize = request.ShardSize,
                ShardCount = (images + request.ShardSize - 1) / request.ShardSize,
                ImageCount = images,
                CreatedAt = DateTime.UtcNow,
                Request = JsonSerializer.Serialize(request.ToMessage()),
            });
            try
            {
                await db.SaveChangesAsync(cancellationToken);
            }
            catch (DbUpdateException)
            {
                // Another request created it at the same moment: its shard layout wins, and both share the set.
            }
        }
        await using ClusterDbContext again = databases.CreateDbContext();
        return await again.FeatureSets.AsNoTracking().SingleAsync(s => s.Key == key, cancellationToken);
    }
}
