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
/// the same preprocessing at 64; several taps in one pass against a pass per tap; and damaged shards healed by a new
/// extraction before training reads them.
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

    private FeatureExtractor NewExtractor(ModelProvider models, ForwardLanes lanes) =>
        new(_store, _databases, models, new DatasetManifestCache(_store), TorchDevice.Cpu, lanes,
            WorkerIdentity.Create("test-worker", TorchDevice.Cpu), new JobTracker(), NullLogger<FeatureExtractor>.Instance);

    private ExtractFeatures ShardJob(ExtractionTap tap, params ExtractionTap[] more) => new()
    {
        FeatureSetKey = tap.FeatureSetKey, ShardIndex = 0, DatasetId = _dataset.Id, RowStart = 0, RowCount = _dataset.Entries.Count,
        Model = BuiltInModels.ResNet18ImageNet, WeightsHash = $"builtin:{BuiltInModels.ResNet18ImageNet}", Layer = tap.Layer,
        Pooling = tap.Pooling, Precision = "fp32", BatchSize = 4, InputSize = InputSize, StorageDtype = tap.StorageDtype, MoreTaps = more,
    };

    /// <summary>A shard file's features widened to float32, their shape and rows, as written.</summary>
    private (float[] Values, long[] Shape, long[] Rows) ReadShard(string key)
    {
        using Stream stream = _store.OpenRead(FeatureExtractor.ShardPath(key, 0));
        using var reader = new Cluster.Storage.Formats.SafetensorsReader(stream, key);
        byte[] Bytes(Cluster.Storage.Formats.SafetensorsTensorInfo info)
        {
            var bytes = new byte[info.ByteLength];
            reader.ReadTensor(info, bytes);
            return bytes;
        }
        var features = reader.GetTensor("features");
        byte[] data = Bytes(features);
        float[] values = features.Dtype == Cluster.Storage.Formats.SafetensorsDtype.BF16
            ? [.. System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(data).ToArray().Select(h => BitConverter.Int32BitsToSingle(h << 16))]
            : System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(data).ToArray();
        long[] rows = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, long>(Bytes(reader.GetTensor("rows"))).ToArray();
        return (values, [.. features.Shape], rows);
    }

    [Fact]
    public async Task Four_taps_in_one_pass_write_what_four_passes_write_and_are_recorded_together()
    {
        ExtractionTap[] taps =
        [
            new() { FeatureSetKey = "one-pass.layer2", Layer = "layer2", Pooling = "none" },
            new() { FeatureSetKey = "one-pass.layer3", Layer = "layer3", Pooling = "avg" },
            new() { FeatureSetKey = "one-pass.layer4", Layer = "layer4", Pooling = "none", StorageDtype = "bf16" },
            new() { FeatureSetKey = "one-pass.avgpool", Layer = "avgpool", Pooling = "avg" },
        ];
        using var lanes = new ForwardLanes(new LaneLayout(1, 1));
        using var models = new ModelProvider(_store, TorchDevice.Cpu, TestKernels.Verifier, NullLogger<ModelProvider>.Instance);
        FeatureExtractor extractor = NewExtractor(models, lanes);
        ExtractFeatures onePass = ShardJob(taps[0], taps[1..]);
        (await extractor.FindRecordedAsync(onePass, CancellationToken.None)).ShouldBeNull();
        ShardOutcome outcome = await extractor.ExtractAsync(onePass, CancellationToken.None);
        outcome.ImageCount.ShouldBe(6);
        outcome.SkippedCount.ShouldBe(1);
        await extractor.RecordAsync(outcome);
        (await extractor.FindRecordedAsync(onePass, CancellationToken.None)).ShouldNotBeNull("all four shards are recorded");
        // A pass with one more tap is not recorded until that tap is.
        (await extractor.FindRecordedAsync(onePass with { MoreTaps = [.. taps[1..], taps[0] with { FeatureSetKey = "one-pass.other" }] }, CancellationToken.None))
            .ShouldBeNull();

        long brokenRow = _dataset.Entries.ToList().FindIndex(e => e.Path.EndsWith("1a-broken.jpg", StringComparison.Ordinal));
        brokenRow.ShouldBeGreaterThanOrEqualTo(0);
        long[][] shapes = [[6, 128, 8, 8], [6, 256], [6, 512, 2, 2], [6, 512]];
        for (int i = 0; i < taps.Length; i++)
        {
            ExtractionTap alone = taps[i] with { FeatureSetKey = taps[i].FeatureSetKey + ".alone" };
            ShardOutcome separate = await extractor.ExtractAsync(ShardJob(alone), CancellationToken.None);
            await extractor.RecordAsync(separate);
            (float[] shared, long[] shape, long[] rows) = ReadShard(taps[i].FeatureSetKey);
            (float[] own, long[] ownShape, long[] ownRows) = ReadShard(alone.FeatureSetKey);
            shape.ShouldBe(shapes[i], taps[i].Layer);
            ownShape.ShouldBe(shape);
            rows.ShouldBe(ownRows);
            rows.ShouldNotContain(brokenRow, "the broken file's row is absent");
            double scale = own.Max(Math.Abs);
            scale.ShouldBeGreaterThan(0.01, taps[i].Layer);
            // The same convolutions on the same pixels: equal up to float32 (bf16 for layer4) rounding of the order they run in.
            double tolerance = (taps[i].StorageDtype == "bf16" ? 1e-2 : 1e-5) * scale;
            shared.Zip(own, (a, b) => (double)Math.Abs(a - b)).Max().ShouldBeLessThanOrEqualTo(tolerance, taps[i].Layer);
        }
        await using ClusterDbContext db = _databases.CreateDbContext();
        var recorded = db.FeatureShards.Where(s => s.FeatureSetKey.StartsWith("one-pass.") && !s.FeatureSetKey.EndsWith(".alone")).ToList();
        recorded.Select(s => s.FeatureSetKey).Order().ShouldBe(taps.Select(t => t.FeatureSetKey).Order());
        recorded.ShouldAllBe(s => s.Status == FeatureShardStatus.Complete && s.ImageCount == 6 && s.SkippedCount == 1);
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

    /// <summary>
    /// A set of two shards planned as the service plans it (its request recorded), one shard's file then flipped by a
    /// bit and the other's deleted: the worker's loader never uses either, extracts both again and trains on what a
    /// fault-free read gave.
    /// </summary>
    [Fact]
    public async Task Damaged_or_missing_shards_are_extracted_again_before_training_reads_them()
    {
        const string key = "resnet18-imagenet.avgpool.at64-repair";
        var request = new EnsureFeatureSet
        {
            DatasetId = _dataset.Id, Model = BuiltInModels.ResNet18ImageNet, Layer = "avgpool", Pooling = "avg",
            Preprocessing = ModelCatalog.Find(BuiltInModels.ResNet18ImageNet).Preprocessing.AtSize(InputSize).Name, Precision = "fp32",
            WeightsHash = $"builtin:{BuiltInModels.ResNet18ImageNet}", ShardSize = 4, BatchSize = 4, InputSize = InputSize,
        };
        using var lanes = new ForwardLanes(new LaneLayout(1, 1));
        using var models = new ModelProvider(_store, TorchDevice.Cpu, TestKernels.Verifier, NullLogger<ModelProvider>.Instance);
        FeatureExtractor extractor = NewExtractor(models, lanes);
        int images = _dataset.Entries.Count;
        int extracted = 0;
        for (int shard = 0; shard * 4 < images; shard++)
        {
            ShardOutcome outcome = await extractor.ExtractAsync(request.ShardJob(key, shard, shard * 4, Math.Min(4, images - (shard * 4))), CancellationToken.None);
            await extractor.RecordAsync(outcome);
            extracted += outcome.ImageCount;
        }
        await using (ClusterDbContext db = _databases.CreateDbContext())
        {
            db.FeatureSets.Add(new FeatureSetRecord
            {
                Key = key, Model = request.Model, WeightsHash = request.WeightsHash, Layer = request.Layer, Pooling = request.Pooling,
                Preprocessing = request.Preprocessing, DatasetId = _dataset.Id, Dtype = FeatureStorageDtype.Fp32.RecordName, Shape = "512",
                Status = FeatureSetStatus.Complete, ShardCount = 2, ShardSize = 4, ImageCount = images, ExtractedCount = extracted,
                Request = System.Text.Json.JsonSerializer.Serialize(request),
            });
            await db.SaveChangesAsync();
        }
        float[] before;
        long[] rowsBefore;
        using (CachedFeatures intact = await FeatureSetReader.LoadAsync(_databases, _store, key, CancellationToken.None))
        {
            before = intact.Features.data<float>().ToArray();
            rowsBefore = intact.Rows;
        }
        File.Delete(_store.Resolve(FeatureExtractor.ShardPath(key, 0)));
        string flipped = _store.Resolve(FeatureExtractor.ShardPath(key, 1));
        byte[] bytes = await File.ReadAllBytesAsync(flipped);
        bytes[^3] ^= 0x10;
        await File.WriteAllBytesAsync(flipped, bytes);
        await Should.ThrowAsync<DamagedFeatureShardException>(() => FeatureSetReader.LoadAsync(_databases, _store, key, CancellationToken.None));

        var repair = new FeatureShardRepair(_databases, _store, extractor, NullLogger<FeatureShardRepair>.Instance);
        using (CachedFeatures healed = await repair.LoadAsync(key, CancellationToken.None))
        {
            healed.Rows.ShouldBe(rowsBefore);
            float[] after = healed.Features.data<float>().ToArray();
            double scale = before.Max(Math.Abs);
            before.Zip(after, (a, b) => (double)Math.Abs(a - b)).Max().ShouldBeLessThanOrEqualTo(1e-5 * scale, "the same shards computed again");
        }
        // Healed on storage and in the database, not just in memory: the plain reader accepts every shard again.
        using (CachedFeatures reread = await FeatureSetReader.LoadAsync(_databases, _store, key, CancellationToken.None))
        {
            reread.Rows.ShouldBe(rowsBefore);
        }

        // A set planned before requests were recorded cannot be extracted again: refused with the file named.
        await using (ClusterDbContext db = _databases.CreateDbContext())
        {
            (await db.FeatureSets.FindAsync(key))!.Request = null;
            await db.SaveChangesAsync();
        }
        File.Delete(flipped);
        var refused = await Should.ThrowAsync<InvalidDataException>(() => repair.LoadAsync(key, CancellationToken.None));
        refused.Message.ShouldStartWith($"{FeatureExtractor.ShardPath(key, 1)}: the file of shard 1 is missing");
        refused.Message.ShouldContain("no worker can extract the shard again");
    }
}
