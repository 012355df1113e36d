using System.Text.Json;
using Cluster.Coordinator.Cli;
using Cluster.Storage.Checkpoints;
using Cluster.Storage.Files;
using Cluster.Storage.Formats;
using Shouldly;

namespace Cluster.Coordinator.Tests.Cli;

/// <summary>`coordinator storage usage` on a storage root with a feature set, a dataset manifest and two trials' checkpoints.</summary>
[Collection(nameof(ConsoleCollection))]
public sealed class StorageUsageCommandTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("storage-usage-tests-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Fact]
    public async Task Usage_reports_each_area_feature_set_and_trial_with_its_real_size()
    {
        var files = new FileStore(_root);
        await files.WriteAllBytesAsync("features/resnet18.avgpool.abc/shard-00000.safetensors", new byte[3000], default);
        await files.WriteAllBytesAsync("features/resnet18.avgpool.abc/shard-00001.safetensors", new byte[1000], default);
        await files.WriteAllBytesAsync("datasets/d1/manifest.tsv", new byte[200], default);
        await files.WriteAllBytesAsync("cluster.db", new byte[50], default);
        var checkpoints = new CheckpointStore(files);
        foreach ((string trial, int segment) in new[] { ("t1", 0), ("t1", 1), ("t2", 0) })
        {
            await checkpoints.WriteAsync(new CheckpointInfo { SweepId = "s1", TrialId = trial, Segment = segment, Epoch = segment },
                [new CheckpointTensor("model/w", SafetensorsDtype.F32, [100], new byte[400])], default);
        }
        checkpoints.Retain("s1", "t1", new HashSet<int> { 1 });

        (int exitCode, string output, string error) = await InProcessCli.RunAsync("storage", "usage", "--storage", _root, "--format", "json");

        exitCode.ShouldBe(0, error);
        using JsonDocument json = JsonDocument.Parse(output);
        JsonElement root = json.RootElement;
        long onDisk = Directory.EnumerateFiles(_root, "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length);
        root.GetProperty("totalBytes").GetInt64().ShouldBe(onDisk);
        var areas = root.GetProperty("areas").EnumerateArray().ToDictionary(a => a.GetProperty("path").GetString()!, a => a.GetProperty("bytes").GetInt64());
        areas["features"].ShouldBe(4000);
        areas["datasets"].ShouldBe(200);
        areas["(files in the root)"].ShouldBe(50);
        areas.Values.Sum().ShouldBe(onDisk);
        JsonElement set = root.GetProperty("featureSets").EnumerateArray().Single();
        set.GetProperty("path").GetString().ShouldBe("features/resnet18.avgpool.abc");
        set.GetProperty("files").GetInt32().ShouldBe(2);
        var trials = root.GetProperty("checkpoints").EnumerateArray()
            .ToDictionary(t => t.GetProperty("trialId").GetString()!, t => t.GetProperty("segments").EnumerateArray().Select(s => s.GetInt32()).ToArray());
        trials["t1"].ShouldBe([1]);
        trials["t2"].ShouldBe([0]);
    }
}
