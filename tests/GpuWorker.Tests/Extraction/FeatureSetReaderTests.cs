using Cluster.GpuWorker.Extraction;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Files;
using Shouldly;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Extraction;

/// <summary>
/// Feature sets written as the extractor writes its shards (<see cref="FeatureExtractor.WriteShard"/>) and recorded as
/// its workers record them, read back for training.
/// </summary>
public sealed class FeatureSetReaderTests : IAsyncLifetime
{
    private const string DatasetId = "0123456789abcdef";
    private static readonly long[] s_rowShape = [2, 3];

    private readonly string _folder = Directory.CreateTempSubdirectory("feature-set-reader-").FullName;
    private ClusterDbContextFactory _databases = null!;
    private FileStore _store = null!;

    public async Task InitializeAsync()
    {
        _store = new FileStore(Path.Combine(_folder, "storage"));
        _databases = new ClusterDbContextFactory(DatabaseProvider.Sqlite, $"Data Source={Path.Combine(_folder, "cluster.db")};Pooling=False");
        await _databases.MigrateAsync(CancellationToken.None);
        await using ClusterDbContext db = _databases.CreateDbContext();
        db.Datasets.Add(new DatasetRecord { Id = DatasetId, Root = "/images", ManifestPath = $"datasets/{DatasetId}/manifest.tsv", ContentHash = "x", ImageCount = 6 });
        await db.SaveChangesAsync();
    }

    public Task DisposeAsync()
    {
        Directory.Delete(_folder, recursive: true);
        return Task.CompletedTask;
    }

    /// <summary>Six dataset rows in two shards of three; row 4 was skipped (an image that did not decode).</summary>
    private static readonly long[][] s_shardRows = [[0, 1, 2], [3, 5]];

    private static float[] FeaturesOf(long row) =>
        [.. Enumerable.Range(0, 6).Select(i => (float)(Math.Sin((row * 6) + i) * Math.Pow(10, i - 2)))];

    private async Task<string> WriteSetAsync(FeatureStorageDtype storage)
    {
        string key = $"test.layer.{storage.Name}";
        await using ClusterDbContext db = _databases.CreateDbContext();
        for (int shard = 0; shard < s_shardRows.Length; shard++)
        {
            long[] rows = s_shardRows[shard];
            float[] features = [.. rows.SelectMany(FeaturesOf)];
            string path = FeatureExtractor.ShardPath(key, shard);
            string sha256 = await _store.WriteWithSha256Async(path, (stream, _) =>
            {
                FeatureExtractor.WriteShard(stream, storage, features, rows, s_rowShape, new Dictionary<string, string>());
                return Task.CompletedTask;
            }, CancellationToken.None);
            db.FeatureShards.Add(new FeatureShardRecord
            {
                FeatureSetKey = key, Index = shard, Status = FeatureShardStatus.Complete, Path = path, Sha256 = sha256,
                RowStart = shard * 3, RowCount = 3, ImageCount = rows.Length, SkippedCount = 3 - rows.Length,
            });
        }
        db.FeatureSets.Add(new FeatureSetRecord
        {
            Key = key, Model = "test", WeightsHash = "random:0", Layer = "layer", Pooling = "none", Preprocessing = "imagenet-rgb-64",
            DatasetId = DatasetId, Dtype = storage.RecordName, Shape = "2x3", Status = FeatureSetStatus.Complete,
            ShardCount = 2, ShardSize = 3, ImageCount = 6, ExtractedCount = 5,
        });
        await db.SaveChangesAsync();
        return key;
    }

    [Theory]
    [InlineData("fp32")]
    [InlineData("bf16")]
    [InlineData("fp16")]
    public async Task A_set_comes_back_in_its_stored_dtype_with_batches_in_float32_rounded_as_torch_rounds(string name)
    {
        FeatureStorageDtype storage = FeatureStorageDtype.Parse(name);
        string key = await WriteSetAsync(storage);

        using CachedFeatures cached = await FeatureSetReader.LoadAsync(_databases, _store, key, CancellationToken.None);

        cached.Dtype.ShouldBe(storage.ScalarType);
        cached.Features.dtype.ShouldBe(storage.ScalarType);
        cached.Features.ElementSize.ShouldBe(storage.BytesPerValue, "kept in the stored dtype: bf16 halves memory");
        cached.Features.shape.ShouldBe([5L, 2, 3]);
        cached.RowShape.ShouldBe(s_rowShape);
        cached.Rows.ShouldBe([0L, 1, 2, 3, 5], "row 4 was skipped, so it is absent; shards are concatenated in order");
        long[] positions = [4, 0, 2];
        using Tensor batch = cached.Take(positions);
        batch.dtype.ShouldBe(ScalarType.Float32);
        batch.shape.ShouldBe([3L, 2, 3]);
        // What torch itself makes of the float32 features in this dtype.
        float[] original = [.. positions.SelectMany(p => FeaturesOf(cached.Rows[p]))];
        using Tensor exact = tensor(original);
        using Tensor rounded = exact.to(storage.ScalarType);
        using Tensor expected = rounded.to(ScalarType.Float32);
        batch.data<float>().ToArray().ShouldBe(expected.data<float>().ToArray());
        using Tensor index = tensor(new long[] { 1 });
        using Tensor one = cached.Batch(index);
        one.shape.ShouldBe([1L, 2, 3]);
        one.reshape(-1).data<float>().ToArray().ShouldBe(RoundTrip(storage, FeaturesOf(1)));
    }

    private static float[] RoundTrip(FeatureStorageDtype storage, float[] values)
    {
        var widened = new float[values.Length];
        storage.Decode(storage.Encode(values), widened);
        return widened;
    }

    [Fact]
    public async Task A_shard_whose_file_changed_after_it_was_recorded_is_refused_with_the_file_named()
    {
        string key = await WriteSetAsync(FeatureStorageDtype.Bf16);
        string path = FeatureExtractor.ShardPath(key, 1);
        byte[] bytes = await File.ReadAllBytesAsync(_store.Resolve(path));
        bytes[^1] ^= 0x01;
        await File.WriteAllBytesAsync(_store.Resolve(path), bytes);

        var failure = await Should.ThrowAsync<DamagedFeatureShardException>(() => FeatureSetReader.LoadAsync(_databases, _store, key, CancellationToken.None));

        failure.Message.ShouldStartWith(path + ": sha256 ");
        failure.Message.ShouldContain("does not match");
        (failure.FeatureSetKey, failure.ShardIndex).ShouldBe((key, 1));
    }

    [Fact]
    public async Task A_shard_whose_file_is_gone_is_named_as_damaged()
    {
        string key = await WriteSetAsync(FeatureStorageDtype.Fp32);
        string path = FeatureExtractor.ShardPath(key, 0);
        File.Delete(_store.Resolve(path));

        var failure = await Should.ThrowAsync<DamagedFeatureShardException>(() => FeatureSetReader.LoadAsync(_databases, _store, key, CancellationToken.None));

        failure.Message.ShouldBe($"{path}: the file of shard 0 is missing, though its row records it as extracted");
        (failure.FeatureSetKey, failure.ShardIndex).ShouldBe((key, 0));
    }

    [Fact]
    public async Task A_set_not_yet_complete_is_refused()
    {
        string key = await WriteSetAsync(FeatureStorageDtype.Fp32);
        await using (ClusterDbContext db = _databases.CreateDbContext())
        {
            (await db.FeatureSets.FindAsync(key))!.Status = FeatureSetStatus.Extracting;
            await db.SaveChangesAsync();
        }

        var failure = await Should.ThrowAsync<InvalidOperationException>(() => FeatureSetReader.LoadAsync(_databases, _store, key, CancellationToken.None));

        failure.Message.ShouldContain("not complete");
    }
}
