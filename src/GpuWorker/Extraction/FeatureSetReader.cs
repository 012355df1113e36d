using System.Globalization;
using System.Security.Cryptography;
using Cluster.GpuWorker.Weights;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Files;
using Cluster.Storage.Formats;
using Microsoft.EntityFrameworkCore;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Extraction;

/// <summary>
/// A complete feature set in memory, for training on cached activations: every extracted row's features in one CPU
/// tensor, in the dtype they were stored in (so a bf16 set takes half the memory of a float32 one here too), and
/// each row's dataset row id. Owns <see cref="Features"/>.
/// </summary>
public sealed class CachedFeatures : IDisposable
{
    internal CachedFeatures(string featureSetKey, Tensor features, long[] rows, long[] rowShape, FeatureStorageDtype storage)
    {
        FeatureSetKey = featureSetKey;
        Features = features;
        Rows = rows;
        RowShape = rowShape;
        Storage = storage;
    }

    public string FeatureSetKey { get; }

    /// <summary>[<see cref="Count"/>, ..<see cref="RowShape"/>] on the CPU, in <see cref="Dtype"/>; row i belongs to dataset row <see cref="Rows"/>[i].</summary>
    public Tensor Features { get; }

    /// <summary>Dataset row ids (positions in the dataset's manifest.tsv), ascending; images the extraction skipped are absent.</summary>
    public long[] Rows { get; }

    /// <summary>The shape of one row's features: [512] after a global pool, [256, 4, 4] for layer3 at 64 pixels.</summary>
    public long[] RowShape { get; }

    public ScalarType Dtype => Storage.ScalarType;

    public FeatureStorageDtype Storage { get; }

    public long Count => Rows.LongLength;

    /// <summary>
    /// The rows at <paramref name="positions"/> (an int64 tensor of positions into <see cref="Features"/>, not dataset
    /// row ids) as a new float32 tensor [positions, ..RowShape]: a batch for training. The caller owns the result.
    /// </summary>
    public Tensor Batch(Tensor positions)
    {
        ArgumentNullException.ThrowIfNull(positions);
        using Tensor selected = Features.index_select(0, positions);
        return selected.to(ScalarType.Float32);
    }

    /// <summary>The rows at <paramref name="positions"/> (positions into <see cref="Features"/>) as float32; see <see cref="Batch"/>.</summary>
    public Tensor Take(long[] positions)
    {
        using Tensor index = tensor(positions, ScalarType.Int64);
        return Batch(index);
    }

    public void Dispose() => Features.Dispose();
}

/// <summary>
/// Loads a complete feature set for training: its complete shards in index order (each file's sha256 checked against
/// the one its worker recorded before a byte of it is used), concatenated into one <see cref="CachedFeatures"/>.
/// </summary>
public static class FeatureSetReader
{
    /// <summary>
    /// Reads the feature set <paramref name="featureSetKey"/>. Memory: the features once, in their stored dtype (each
    /// shard is read straight into its rows of the result). A set that is missing or not complete is an
    /// <see cref="InvalidOperationException"/>; a shard file that is missing or whose hash is not what was recorded is a
    /// <see cref="DamagedFeatureShardException"/>, one whose dtype or shape is not an <see cref="InvalidDataException"/>,
    /// each naming the file.
    /// </summary>
    public static async Task<CachedFeatures> LoadAsync(
        ClusterDbContextFactory databases, FileStore store, string featureSetKey, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(databases);
        ArgumentNullException.ThrowIfNull(store);
        FeatureSetRecord set;
        List<FeatureShardRecord> shards;
        await using (ClusterDbContext db = databases.CreateDbContext())
        {
            set = await db.FeatureSets.AsNoTracking().SingleOrDefaultAsync(s => s.Key == featureSetKey, ct)
                ?? throw new InvalidOperationException($"there is no feature set '{featureSetKey}'");
            if (set.Status != FeatureSetStatus.Complete)
            {
                throw new InvalidOperationException(
                    $"feature set '{featureSetKey}' is {set.Status.ToString().ToLowerInvariant()}, not complete: extract it first");
            }
            shards = await db.FeatureShards.AsNoTracking()
                .Where(s => s.FeatureSetKey == featureSetKey && s.Status == FeatureShardStatus.Complete)
                .OrderBy(s => s.Index).ToListAsync(ct);
        }
        if (shards.Count != set.ShardCount)
        {
            throw new InvalidOperationException(
                $"feature set '{featureSetKey}' is marked complete but has {shards.Count} of its {set.ShardCount} shards recorded as complete");
        }
        FeatureStorageDtype storage = FeatureStorageDtype.All.FirstOrDefault(d => d.RecordName == set.Dtype)
            ?? throw new InvalidOperationException($"feature set '{featureSetKey}' records dtype '{set.Dtype}', which this worker cannot read");
        long[] rowShape = set.Shape.Split('x').Select(d => long.Parse(d, CultureInfo.InvariantCulture)).ToArray();
        long total = shards.Sum(s => (long)s.ImageCount);

        Tensor features = empty([total, .. rowShape], storage.ScalarType);
        try
        {
            var rows = new long[total];
            long at = 0;
            foreach (FeatureShardRecord shard in shards)
            {
                using Tensor target = features.narrow(0, at, shard.ImageCount);
                await ReadShardAsync(store, shard, storage, rowShape, target, rows.AsMemory((int)at, shard.ImageCount), ct);
                at += shard.ImageCount;
            }
            for (int i = 1; i < rows.Length; i++)
            {
                if (rows[i] <= rows[i - 1])
                {
                    throw new InvalidDataException(
                        $"feature set '{featureSetKey}': row {rows[i]} follows row {rows[i - 1]}; shards must hold ascending, distinct rows");
                }
            }
            return new CachedFeatures(featureSetKey, features, rows, rowShape, storage);
        }
        catch
        {
            features.Dispose();
            throw;
        }
    }

    /// <summary>
    /// One shard into its rows of the result. The file is opened once and hashed through that handle before it is
    /// parsed, so what is read is what was hashed even if the file is replaced meanwhile (writes are atomic renames).
    /// </summary>
    private static async Task ReadShardAsync(
        FileStore store, FeatureShardRecord shard, FeatureStorageDtype storage, long[] rowShape, Tensor target, Memory<long> rows, CancellationToken ct)
    {
        Stream opened;
        try
        {
            opened = store.OpenRead(shard.Path);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new DamagedFeatureShardException(shard.FeatureSetKey, shard.Index,
                $"{shard.Path}: the file of shard {shard.Index} is missing, though its row records it as extracted");
        }
        await using Stream stream = opened;
        string sha256 = Convert.ToHexStringLower(await SHA256.HashDataAsync(stream, ct));
        if (!string.Equals(sha256, shard.Sha256, StringComparison.OrdinalIgnoreCase))
        {
            throw new DamagedFeatureShardException(shard.FeatureSetKey, shard.Index,
                $"{shard.Path}: sha256 {sha256} does not match {shard.Sha256}, recorded when shard {shard.Index} was extracted: the file was changed or damaged since");
        }
        stream.Position = 0;
        using var reader = new SafetensorsReader(stream, shard.Path, leaveOpen: true);
        SafetensorsTensorInfo featureInfo = reader.GetTensor("features");
        SafetensorsTensorInfo rowInfo = reader.GetTensor("rows");
        long[] expected = [shard.ImageCount, .. rowShape];
        if (featureInfo.Dtype != storage.Safetensors || !featureInfo.Shape.SequenceEqual(expected))
        {
            throw new InvalidDataException(
                $"{shard.Path}: features are {featureInfo.Dtype} {Safetensors.FormatShape(featureInfo.Shape)}; the feature set records {storage.Safetensors} {Safetensors.FormatShape(expected)}");
        }
        if (rowInfo.Dtype != SafetensorsDtype.I64 || !rowInfo.Shape.SequenceEqual([(long)shard.ImageCount]))
        {
            throw new InvalidDataException(
                $"{shard.Path}: rows are {rowInfo.Dtype} {Safetensors.FormatShape(rowInfo.Shape)}, not I64 [{shard.ImageCount}]");
        }
        TensorBytes.Fill(target, (offset, destination) => reader.ReadTensor(featureInfo, offset, destination));
        // safetensors is little-endian, as every machine this runs on is.
        reader.ReadTensor(rowInfo, System.Runtime.InteropServices.MemoryMarshal.AsBytes(rows.Span));
    }
}
