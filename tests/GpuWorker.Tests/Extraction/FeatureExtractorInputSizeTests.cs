using Cluster.Contracts.Features;
using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Extraction;
using Cluster.GpuWorker.Hosting;
using Cluster.GpuWorker.Images;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Tests.Kernels;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Datasets;
using Cluster.Storage.Files;
using Microsoft.Extensions.Logging.Abstractions;
using Shouldly;
using SkiaSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Extraction;

/// <summary>
/// resnet18-imagenet extracted at 64×64 (as training on Fashion-MNIST runs it) by the worker's own extractor, read back
/// with <see cref="FeatureSetReader"/>, against a direct forward pass of the network on the same images decoded with
/// the same preprocessing at 64.
/// </summary>
public sealed class FeatureExtractorInputSizeTests : IAsyncLifetime
{
    private const int InputSize = 64;
    private readonly string _folder = Directory.CreateTempSubdirectory("extract-at-64-").FullName;
    private ClusterDbContextFactory _databases = null!;
    private FileStore _store = null!;
    private DatasetManifest _dataset = null!;

    public async Task InitializeAsync()
    {
        TorchRuntime.Initialize();
        string images = Path.Combine(_folder, "images");
        var random = new Random(3);
        foreach ((string label, int count) in new[] { ("shirt", 3), ("shoe", 3) })
        {
            Directory.CreateDirectory(Path.Combine(images, label));
            for (int i = 0; i < count; i++)
            {
                // Sizes other than 64 and not square, so the resize and the centre crop both do something.
                int width = 50 + random.Next(80), height = 40 + random.Next(80);
                int seed = random.Next();
                byte[] png = Images.TestImages.Encode(width, height,
                    (x, y) => new SKColor((byte)((x * 7) + seed), (byte)((y * 5) + (seed >> 8)), (byte)(((x + y) * 3) + (seed >> 16))));
                await File.WriteAllBytesAsync(Path.Combine(images, label, $"{i}.png"), png);
            }
        }
        // Listed by its extension, skipped by the decoder: its row must be absent from the features.
        await File.WriteAllBytesAsync(Path.Combine(images, "shoe", "1a-broken.jpg"), [1, 2, 3, 4, 5, 6, 7, 8]);
        _store = new FileStore(Path.Combine(_folder, "storage"));
        _dataset = await DatasetScanner.ScanFolderAsync(images, null, CancellationToken.None);
        await _dataset.SaveAsync(_store, CancellationToken.None);
        _databases = new ClusterDbContextFactory(DatabaseProvider.Sqlite, $"Data Source={Path.Combine(_folder, "cluster.db")};Pooling=False");
        await _databases.MigrateAsync(CancellationToken.None);
        await using ClusterDbContext db = _databases.CreateDbContext();
        db.Datasets.Add(new DatasetRecord
        {
            Id = _dataset.Id, Root = _dataset.Root, ManifestPath = $"{_dataset.Directory}/{DatasetManifest.ManifestFileName}",
            ContentHash = _dataset.ContentSha256, ImageCount = _dataset.Entries.Count,
        });
        await db.SaveChangesAsync();
    }

    public Task DisposeAsync()
    {
        Directory.Delete(_folder, recursive: true);
        return Task.CompletedTask;
    }

    /// <summary>Extracts the whole dataset as one shard, records it and marks the set complete, as the coordinator does.</summary>
    private async Task<string> ExtractAsync(string storageDtype)
    {
        string key = $"resnet18-imagenet.avgpool.at64-{storageDtype}";
        var device = TorchDevice.Cpu;
        using var lanes = new ForwardLanes(new LaneLayout(1, 1));
        using var models = new ModelProvider(_store, device, TestKernels.Verifier, NullLogger<ModelProvider>.Instance);
        var extractor = new FeatureExtractor(_store, _databases, models, new DatasetManifestCache(_store), device, lanes,
            WorkerIdentity.Create("test-worker", device), new JobTracker(), NullLogger<FeatureExtractor>.Instance);
        var job = new ExtractFeatures
        {
            FeatureSetKey = key, ShardIndex = 0, DatasetId = _dataset.Id, RowStart = 0, RowCount = _dataset.Entries.Count,
            Model = BuiltInModels.ResNet18ImageNet, WeightsHash = $"builtin:{BuiltInModels.ResNet18ImageNet}", Layer = "avgpool",
            Pooling = "avg", Precision = "fp32", BatchSize = 3, InputSize = InputSize, StorageDtype = storageDtype,
        };
        ShardOutcome outcome = await extractor.ExtractAsync(job, CancellationToken.None);
        await extractor.RecordAsync(outcome);
        await using ClusterDbContext db = _databases.CreateDbContext();
        db.FeatureSets.Add(new FeatureSetRecord
        {
            Key = key, Model = job.Model, WeightsHash = job.WeightsHash, Layer = job.Layer, Pooling = job.Pooling,
            Preprocessing = ModelCatalog.Find(job.Model).Preprocessing.AtSize(InputSize).Name, DatasetId = _dataset.Id,
            Dtype = FeatureStorageDtype.Parse(storageDtype).RecordName, Shape = "512", Status = FeatureSetStatus.Complete,
            ShardCount = 1, ShardSize = job.RowCount, ImageCount = job.RowCount, ExtractedCount = outcome.ImageCount,
        });
        await db.SaveChangesAsync();
        return key;
    }

    /// <summary>The network itself on the images decoded at 64: [images, 512] float32, and the rows that decoded.</summary>
    private (float[] Features, long[] Rows) DirectForwardPass()
    {
        Preprocessing preprocessing = BuiltInModels.LoadPreprocessing(BuiltInModels.ResNet18ImageNet).AtSize(InputSize);
        var decoder = new ImageDecoder(new ImageDecoderOptions { Root = _dataset.Root });
        var pixels = new List<float>();
        var rows = new List<long>();
        var image = new float[ImageDecoder.ImageLength(preprocessing)];
        for (int row = 0; row < _dataset.Entries.Count; row++)
        {
            if (decoder.Decode(_dataset.Entries[row].Path, preprocessing, image).IsOk)
            {
                pixels.AddRange(image);
                rows.Add(row);
            }
        }
        using BuiltInModel model = BuiltInModels.Load(BuiltInModels.ResNet18ImageNet);
        model.Network.eval();
        using var noGrad = no_grad();
        using Tensor batch = tensor(pixels.ToArray(), [rows.Count, 3, InputSize, InputSize]);
        using Tensor pooled = model.Network.forward(batch);
        using Tensor flat = pooled.flatten(1);
        return (flat.data<float>().ToArray(), rows.ToArray());
    }

    [Fact]
    public async Task Features_at_64_equal_a_direct_forward_pass_and_bf16_storage_holds_their_bf16_rounding()
    {
        (float[] expected, long[] expectedRows) = DirectForwardPass();
        expectedRows.Length.ShouldBe(6, "the broken file is skipped");

        string key = await ExtractAsync("fp32");
        using (CachedFeatures cached = await FeatureSetReader.LoadAsync(_databases, _store, key, CancellationToken.None))
        {
            cached.Rows.ShouldBe(expectedRows, "the skipped image's row is absent");
            cached.RowShape.ShouldBe([512L]);
            float[] extracted = cached.Features.data<float>().ToArray();
            double scale = expected.Max(Math.Abs);
            scale.ShouldBeGreaterThan(0.1);
            // The worker runs channels-last (the same float arithmetic in another order): float32 noise, no more.
            expected.Zip(extracted, (e, x) => (double)Math.Abs(e - x)).Max().ShouldBeLessThan(1e-4 * scale);
        }

        string bf16Key = await ExtractAsync("bf16");
        using (CachedFeatures cached = await FeatureSetReader.LoadAsync(_databases, _store, bf16Key, CancellationToken.None))
        using (CachedFeatures fp32 = await FeatureSetReader.LoadAsync(_databases, _store, key, CancellationToken.None))
        {
            cached.Dtype.ShouldBe(ScalarType.BFloat16);
            cached.Rows.ShouldBe(expectedRows);
            using Tensor all = tensor(Enumerable.Range(0, cached.Rows.Length).Select(i => (long)i).ToArray());
            using Tensor widened = cached.Batch(all);
            using Tensor rounded = fp32.Features.to(ScalarType.BFloat16);
            using Tensor torchsOwn = rounded.to(ScalarType.Float32);
            widened.data<float>().ToArray().ShouldBe(torchsOwn.data<float>().ToArray());
        }
        await using ClusterDbContext db = _databases.CreateDbContext();
        FeatureShardRecord shard = db.FeatureShards.Single(s => s.FeatureSetKey == bf16Key);
        shard.SkippedCount.ShouldBe(1);
        new FileInfo(_store.Resolve(shard.Path)).Length.ShouldBeLessThan(6 * 512 * 2 + 1024, "two bytes a value");
    }
}
