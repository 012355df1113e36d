using System.Text.Json;
using Cluster.Contracts.Features;
using Cluster.IntegrationTests.Support;
using Cluster.Storage.Database.Entities;
using Microsoft.EntityFrameworkCore;
using Shouldly;
using Xunit.Abstractions;

namespace Cluster.IntegrationTests;

/// <summary>
/// Jobs whose paths leave the storage root (a `..` segment, an absolute path, a symlink pointing out) reach a real worker
/// over RabbitMQ, as anyone holding the virtual host's credentials could send them: each shard fails with one line naming
/// the path and what is wrong with it (never the content of the file it names), nothing is read or written outside the
/// root, and the worker extracts the next good shard.
/// </summary>
public sealed class HostileMessageTests(ITestOutputHelper output) : IAsyncLifetime
{
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(4);
    private IsolatedCluster _cluster = null!;

    public async Task InitializeAsync()
    {
        _cluster = await IsolatedCluster.CreateAsync();
        await _cluster.MigrateAsync(s_deadline);
    }

    public async Task DisposeAsync()
    {
        await _cluster.DisposeAsync();
        if (Directory.Exists(Outside))
        {
            Directory.Delete(Outside, recursive: true);
        }
    }

    private string Outside => _cluster.StorageRoot + "-outside";

    [Fact]
    public async Task Paths_that_leave_the_storage_root_fail_their_shard_with_one_line_and_the_worker_extracts_the_next_one()
    {
        string images = Path.Combine(_cluster.StorageRoot, "images");
        TestImages.WriteDataset(images, goodPerClass: 2, hostile: false);
        _cluster.Coordinator("serve", "--cluster");
        _cluster.Worker("--device", "cpu", "--id", "worker-" + _cluster.Name);
        (int code, ClusterProcess extract) = await _cluster.RunCoordinatorAsync(s_deadline, "extract", "--cluster", "--dataset", images, "--format", "json");
        code.ShouldBe(0, _cluster.DescribeProcesses());
        string key;
        using (JsonDocument result = JsonDocument.Parse(extract.StandardOutput))
        {
            key = result.RootElement.GetProperty("key").GetString()!;
        }
        FeatureSetRecord set;
        await using (var db = _cluster.Database())
        {
            set = await db.FeatureSets.AsNoTracking().SingleAsync(s => s.Key == key);
        }
        // A job as the coordinator wrote it for that set, under a key of its own: the control, which must succeed.
        var good = new ExtractFeatures
        {
            FeatureSetKey = "control",
            ShardIndex = 0,
            DatasetId = set.DatasetId,
            RowStart = 0,
            RowCount = 2,
            Model = set.Model,
            WeightsHash = set.WeightsHash,
            Layer = set.Layer,
            Pooling = set.Pooling,
            Precision = "fp32",
        };

        // Outside the root: a copy of the dataset's manifest folder, and a file whose content must never be shown.
        string secret = Path.Combine(Outside, "secret.safetensors");
        Directory.CreateDirectory(Outside);
        File.WriteAllText(secret, "TOP-SECRET-CONTENT\n");
        string copied = Path.Combine(Outside, "dataset");
        Directory.CreateDirectory(copied);
        foreach (string file in Directory.GetFiles(Path.Combine(_cluster.StorageRoot, "datasets", set.DatasetId)))
        {
            File.Copy(file, Path.Combine(copied, Path.GetFileName(file)));
        }
        Directory.CreateSymbolicLink(Path.Combine(_cluster.StorageRoot, "datasets", "escape"), copied);
        Directory.CreateDirectory(Path.Combine(_cluster.StorageRoot, "weights"));
        File.CreateSymbolicLink(Path.Combine(_cluster.StorageRoot, "weights", "linked.safetensors"), secret);
        string escapedKey = "../../" + Path.GetFileName(Outside) + "/written";

        (string Key, ExtractFeatures Job, string Expected)[] hostile =
        [
            ("dotdot-dataset", good with { FeatureSetKey = "dotdot-dataset", DatasetId = "../" + set.DatasetId }, "'..'"),
            ("symlink-dataset", good with { FeatureSetKey = "symlink-dataset", DatasetId = "escape" }, "symlink that leads outside the storage root"),
            ("absolute-weights", good with { FeatureSetKey = "absolute-weights", WeightsPath = secret }, "absolute"),
            ("dotdot-weights", good with { FeatureSetKey = "dotdot-weights", WeightsPath = "weights/../../" + Path.GetFileName(Outside) + "/secret.safetensors" }, "'..'"),
            ("symlink-weights", good with { FeatureSetKey = "symlink-weights", WeightsPath = "weights/linked.safetensors" }, "symlink that leads outside the storage root"),
            (escapedKey, good with { FeatureSetKey = escapedKey }, "'..'"),
        ];
        await _cluster.SendJobsAsync([.. hostile.Select(h => (object)h.Job), good]);

        FeatureShardRecord control = await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            return await db.FeatureShards.AsNoTracking().SingleOrDefaultAsync(s => s.FeatureSetKey == "control");
        }, s_deadline, () => "the control shard, sent after the hostile ones\n" + _cluster.DescribeProcesses());
        control.Status.ShouldBe(FeatureShardStatus.Complete, control.FailureReason);
        control.ImageCount.ShouldBe(2);

        await using (var db = _cluster.Database())
        {
            string[] keys = [.. hostile.Select(h => h.Key)];
            Dictionary<string, FeatureShardRecord> rows = await db.FeatureShards.AsNoTracking().Where(s => keys.Contains(s.FeatureSetKey)).ToDictionaryAsync(s => s.FeatureSetKey);
            foreach ((string hostileKey, ExtractFeatures _, string expected) in hostile)
            {
                FeatureShardRecord row = rows.GetValueOrDefault(hostileKey).ShouldNotBeNull($"shard {hostileKey} recorded");
                output.WriteLine($"{hostileKey}: {row.Status}: {row.FailureReason}");
                row.Status.ShouldBe(FeatureShardStatus.Failed);
                string reason = row.FailureReason.ShouldNotBeNull();
                reason.ShouldContain(expected, Case.Sensitive, hostileKey);
                reason.ShouldStartWith("Storage path '", Case.Sensitive, hostileKey);
                reason.ShouldNotContain("TOP-SECRET", Case.Sensitive, hostileKey);
                reason.ShouldNotContain("\n", Case.Sensitive, hostileKey);
            }
        }
        // Nothing was written outside the root.
        Directory.Exists(Path.Combine(Outside, "written")).ShouldBeFalse();
        Directory.GetFileSystemEntries(Outside).Order().ShouldBe([copied, secret]);
        (await _cluster.QueueAsync(Cluster.Contracts.QueueNames.GpuWorkError))?.Ready.ShouldBe(0, "each failure recorded by the worker, none left to the error queue");
    }
}
