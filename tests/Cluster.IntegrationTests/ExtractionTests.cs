using System.Security.Cryptography;
using System.Text.Json;
using Cluster.Contracts;
using Cluster.Hosting;
using Cluster.IntegrationTests.Support;
using MassTransit;
using Cluster.Storage.Database.Entities;
using Microsoft.EntityFrameworkCore;
using Shouldly;

namespace Cluster.IntegrationTests;

/// <summary>Bulk feature extraction through RabbitMQ, worker processes and PostgreSQL.</summary>
public sealed class ExtractionTests : IAsyncLifetime
{
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(5);
    private IsolatedCluster _cluster = null!;
    private string _dataset = null!;

    public async Task InitializeAsync()
    {
        _cluster = await IsolatedCluster.CreateAsync();
        _dataset = Path.Combine(_cluster.StorageRoot, "images");
        await _cluster.MigrateAsync(s_deadline);
        // The service plans and completes feature sets; `extract` asks it and follows.
        _cluster.Coordinator("serve", "--cluster");
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    private async Task<JsonDocument> ExtractAsync(params string[] extra)
    {
        (int code, ClusterProcess extract) = await _cluster.RunCoordinatorAsync(s_deadline,
            ["extract", "--cluster", "--dataset", _dataset, "--format", "json", .. extra]);
        code.ShouldBe(0, _cluster.DescribeProcesses());
        return JsonDocument.Parse(extract.StandardOutput);
    }

    private async Task<List<FeatureShardRecord>> ShardsAsync(string key)
    {
        await using var db = _cluster.Database();
        return await db.FeatureShards.AsNoTracking().Where(s => s.FeatureSetKey == key).OrderBy(s => s.Index).ToListAsync();
    }

    [Fact]
    public async Task Shards_hold_every_good_image_once_and_every_bad_one_is_listed_with_its_reason()
    {
        Dictionary<string, string> hostile = TestImages.WriteDataset(_dataset, goodPerClass: 5, hostile: true);
        // The same picture under two names must give the same features, wherever it falls in the batches.
        File.Copy(Path.Combine(_dataset, "cats", "cat001.jpg"), Path.Combine(_dataset, "dogs", "same-as-cat001.jpg"));
        _cluster.Worker("--device", "cpu", "--id", "extractor-" + _cluster.Name);

        using JsonDocument result = await ExtractAsync("--shard-size", "4", "--batch-size", "3");

        string key = result.RootElement.GetProperty("key").GetString()!;
        result.RootElement.GetProperty("cached").GetBoolean().ShouldBeFalse();
        result.RootElement.GetProperty("extracted").GetInt32().ShouldBe(11);
        var skipped = result.RootElement.GetProperty("skipped").EnumerateArray()
            .ToDictionary(s => s.GetProperty("path").GetString()!, s => s.GetProperty("reason").GetString()!);
        skipped.Keys.ShouldBe(hostile.Keys, ignoreOrder: true);
        foreach ((string path, string code) in hostile)
        {
            skipped[path].ShouldStartWith(code + ":");
        }

        List<FeatureShardRecord> shards = await ShardsAsync(key);
        var rows = new List<long>();
        var features = new List<float[]>();
        foreach (FeatureShardRecord shard in shards)
        {
            shard.Status.ShouldBe(FeatureShardStatus.Complete);
            string file = Path.Combine(_cluster.StorageRoot, shard.Path);
            Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(file))).ShouldBe(shard.Sha256);
            SafetensorsFile tensors = SafetensorsFile.Read(file);
            tensors.Tensors["features"].Dtype.ShouldBe("F32");
            tensors.Tensors["rows"].Dtype.ShouldBe("I64");
            long n = tensors.Tensors["rows"].Shape[0];
            tensors.Tensors["features"].Shape.ShouldBe([n, 512L]);
            float[] values = tensors.Floats("features");
            rows.AddRange(tensors.Longs("rows"));
            for (int i = 0; i < n; i++)
            {
                features.Add(values[(i * 512)..((i + 1) * 512)]);
            }
        }
        rows.Count.ShouldBe(11);
        rows.ShouldBe(rows.Order().Distinct().ToList(), "each row once, in manifest order");
        features.ShouldAllBe(f => f.All(float.IsFinite) && f.Any(v => v != 0));

        // Manifest order is (label, path): cats/cat000..cat004, then dogs/dog000..dog004.png and dogs/same-as-cat001.jpg.
        string[] manifest = File.ReadAllLines(Path.Combine(_cluster.StorageRoot, "datasets", result.RootElement.GetProperty("dataset").GetString()!, "manifest.tsv"))[1..];
        int Row(string path) => Array.FindIndex(manifest, line => line.StartsWith(path + "\t", StringComparison.Ordinal));
        float[] original = features[rows.IndexOf(Row("cats/cat001.jpg"))];
        float[] copy = features[rows.IndexOf(Row("dogs/same-as-cat001.jpg"))];
        for (int i = 0; i < 512; i++)
        {
            copy[i].ShouldBe(original[i], Math.Max(1e-4f, Math.Abs(original[i]) * 1e-4f));
        }
        File.Exists(Path.Combine(_cluster.StorageRoot, "features", key, "manifest.json")).ShouldBeTrue();
    }

    [Fact]
    public async Task A_complete_set_is_reused_at_once_and_a_partial_one_resumes_only_its_missing_shards()
    {
        TestImages.WriteDataset(_dataset, goodPerClass: 6, hostile: false);
        _cluster.Worker("--device", "cpu");
        using JsonDocument first = await ExtractAsync("--shard-size", "4");
        string key = first.RootElement.GetProperty("key").GetString()!;
        List<FeatureShardRecord> before = await ShardsAsync(key);
        before.Count.ShouldBe(3);

        using (JsonDocument again = await ExtractAsync("--shard-size", "4"))
        {
            again.RootElement.GetProperty("cached").GetBoolean().ShouldBeTrue();
            again.RootElement.GetProperty("key").GetString().ShouldBe(key);
        }

        // Make the set partial: shard 1 lost (row and file), the set no longer complete.
        await using (var db = _cluster.Database())
        {
            db.FeatureShards.Remove(await db.FeatureShards.SingleAsync(s => s.FeatureSetKey == key && s.Index == 1));
            (await db.FeatureSets.SingleAsync(s => s.Key == key)).Status = FeatureSetStatus.Extracting;
            await db.SaveChangesAsync();
        }
        File.Delete(Path.Combine(_cluster.StorageRoot, before[1].Path));

        using JsonDocument resumed = await ExtractAsync("--shard-size", "4");

        resumed.RootElement.GetProperty("cached").GetBoolean().ShouldBeFalse();
        List<FeatureShardRecord> after = await ShardsAsync(key);
        after.Select(s => s.Index).ShouldBe([0, 1, 2]);
        after[0].CreatedAt.ShouldBe(before[0].CreatedAt, "shard 0 was not extracted again");
        after[2].CreatedAt.ShouldBe(before[2].CreatedAt, "shard 2 was not extracted again");
        after[1].CreatedAt.ShouldBeGreaterThan(before[1].CreatedAt);
        File.Exists(Path.Combine(_cluster.StorageRoot, after[1].Path)).ShouldBeTrue();
    }

    [Fact]
    public async Task An_extraction_whose_terminal_is_killed_is_completed_by_the_service()
    {
        TestImages.WriteDataset(_dataset, goodPerClass: 6, hostile: false);
        ClusterProcess extract = _cluster.Coordinator("extract", "--cluster", "--dataset", _dataset, "--shard-size", "2", "--format", "json");
        // Planned by the service (the row exists), and no worker yet: then the asking CLI dies.
        FeatureSetRecord planned = await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            return await db.FeatureSets.AsNoTracking().SingleOrDefaultAsync();
        }, s_deadline, "the service to plan the feature set");
        using (var kill = System.Diagnostics.Process.Start("kill", ["-KILL", extract.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
        {
            await kill.WaitForExitAsync();
        }
        await extract.WaitForExitAsync(s_deadline);
        planned.Status.ShouldBe(FeatureSetStatus.Extracting);

        _cluster.Worker("--device", "cpu");

        await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            return (await db.FeatureSets.AsNoTracking().SingleAsync(s => s.Key == planned.Key)).Status == FeatureSetStatus.Complete;
        }, s_deadline, "the service to complete the set with no CLI watching");
        (await ShardsAsync(planned.Key)).Select(s => s.Index).ShouldBe([0, 1, 2, 3, 4, 5]);
        File.Exists(Path.Combine(_cluster.StorageRoot, "features", planned.Key, "manifest.json")).ShouldBeTrue();
    }

    [Fact]
    public async Task Two_requests_at_the_same_time_produce_one_feature_set()
    {
        TestImages.WriteDataset(_dataset, goodPerClass: 4, hostile: false);
        _cluster.Worker("--device", "cpu");

        ClusterProcess a = _cluster.Coordinator("extract", "--cluster", "--dataset", _dataset, "--shard-size", "3", "--format", "json");
        ClusterProcess b = _cluster.Coordinator("extract", "--cluster", "--dataset", _dataset, "--shard-size", "3", "--format", "json");
        (await a.WaitForExitAsync(s_deadline)).ShouldBe(0, a.Describe());
        (await b.WaitForExitAsync(s_deadline)).ShouldBe(0, b.Describe());

        using JsonDocument ra = JsonDocument.Parse(a.StandardOutput);
        using JsonDocument rb = JsonDocument.Parse(b.StandardOutput);
        string key = ra.RootElement.GetProperty("key").GetString()!;
        rb.RootElement.GetProperty("key").GetString().ShouldBe(key);
        await using var db = _cluster.Database();
        (await db.FeatureSets.CountAsync()).ShouldBe(1);
        var shards = await db.FeatureShards.AsNoTracking().Where(s => s.FeatureSetKey == key).ToListAsync();
        shards.Select(s => s.Index).Order().ShouldBe([0, 1, 2]);
        shards.Sum(s => s.ImageCount).ShouldBe(8);
    }

    [Fact]
    public async Task A_worker_killed_during_a_shard_leaves_it_to_another_worker_and_it_is_recorded_once()
    {
        TestImages.WriteDataset(_dataset, goodPerClass: 60, hostile: false);
        ClusterProcess first = _cluster.Worker("--device", "cpu", "--id", "doomed-" + _cluster.Name);
        ClusterProcess extract = _cluster.Coordinator("extract", "--cluster", "--dataset", _dataset, "--shard-size", "120", "--batch-size", "4", "--format", "json");
        // The worker loads the model inside the shard's job, so its "ready" line means it holds the shard, which then
        // takes seconds (120 images in batches of 4). Its log is seen within the poll; RabbitMQ's management
        // statistics (unacknowledged messages) lag by up to their 5 s collection interval, and a fast worker had
        // finished and recorded the shard by then.
        await Eventually.WaitAsync(
            () => Task.FromResult((first.StandardOutput + first.StandardError).Contains(" ready on ", StringComparison.Ordinal)),
            s_deadline, "the first worker to take the shard and load its model");

        using (var kill = System.Diagnostics.Process.Start("kill", ["-KILL", first.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
        {
            await kill.WaitForExitAsync();
        }
        await first.WaitForExitAsync(s_deadline);
        await using (var db = _cluster.Database())
        {
            (await db.FeatureShards.CountAsync()).ShouldBe(0, "the killed worker recorded nothing");
        }
        string secondId = "survivor-" + _cluster.Name;
        _cluster.Worker("--device", "cpu", "--id", secondId);

        (await extract.WaitForExitAsync(s_deadline)).ShouldBe(0, _cluster.DescribeProcesses());
        using JsonDocument result = JsonDocument.Parse(extract.StandardOutput);
        List<FeatureShardRecord> shards = await ShardsAsync(result.RootElement.GetProperty("key").GetString()!);
        FeatureShardRecord shard = shards.ShouldHaveSingleItem();
        shard.WorkerId.ShouldBe(secondId);
        shard.ImageCount.ShouldBe(120);
        SafetensorsFile.Read(Path.Combine(_cluster.StorageRoot, shard.Path)).Tensors["rows"].Shape.ShouldBe([120L]);
    }
}

/// <summary>A job the worker cannot do is recorded as failed with its reason, and the worker goes on working.</summary>
public sealed class FailedShardTests : IAsyncLifetime
{
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(5);
    private IsolatedCluster _cluster = null!;

    public async Task InitializeAsync()
    {
        _cluster = await IsolatedCluster.CreateAsync();
        await _cluster.MigrateAsync(s_deadline);
        // The service plans and completes feature sets; `extract` asks it and follows.
        _cluster.Coordinator("serve", "--cluster");
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    [Fact]
    public async Task A_shard_job_for_a_dataset_the_storage_does_not_hold_is_recorded_as_failed_and_the_worker_takes_the_next_job()
    {
        _cluster.Worker("--device", "cpu");
        await _cluster.SendJobsAsync(new Cluster.Contracts.Features.ExtractFeatures
        {
            FeatureSetKey = "bogus.key",
            ShardIndex = 0,
            DatasetId = "0000000000000000",
            RowStart = 0,
            RowCount = 1,
            Model = "resnet51",
            WeightsHash = "random:0",
            Layer = "avgpool",
            Pooling = "avg",
            Precision = "fp32",
        });

        FeatureShardRecord failed = await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            return await db.FeatureShards.AsNoTracking().SingleOrDefaultAsync(s => s.FeatureSetKey == "bogus.key");
        }, s_deadline, "the failed shard to be recorded");

        failed.Status.ShouldBe(FeatureShardStatus.Failed);
        failed.FailureReason.ShouldBe($"Dataset '0000000000000000' is not in the storage root '{_cluster.StorageRoot}' (no datasets/0000000000000000/manifest.tsv).");
        (int code, ClusterProcess selftest) = await _cluster.RunCoordinatorAsync(s_deadline, "selftest", "--cluster", "--format", "json");
        code.ShouldBe(0, selftest.Describe());
        (await _cluster.QueueAsync(QueueNames.GpuWork + "_error"))?.Ready.ShouldBe(0);
    }
}
