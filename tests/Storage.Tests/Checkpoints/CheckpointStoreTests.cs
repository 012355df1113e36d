using Cluster.Storage.Checkpoints;
using Cluster.Storage.Files;
using Cluster.Storage.Formats;
using Shouldly;

namespace Cluster.Storage.Tests.Checkpoints;

public sealed class CheckpointStoreTests : IDisposable
{
    private const string Sweep = "sweep-1";
    private const string Trial = "trial-7";

    private readonly string _folder = Path.Combine(Path.GetTempPath(), "checkpoint-tests-" + Guid.NewGuid().ToString("N"));
    private readonly FileStore _files;
    private readonly CheckpointStore _store;

    public CheckpointStoreTests()
    {
        _files = new FileStore(_folder);
        _store = new CheckpointStore(_files);
    }

    public void Dispose()
    {
        if (Directory.Exists(_folder))
        {
            Directory.Delete(_folder, recursive: true);
        }
    }

    [Fact]
    public async Task The_newest_segment_is_read_back_with_its_tensors_and_state()
    {
        await Write(0, epoch: 1, fill: 1);
        CheckpointInfo written = await Write(1, epoch: 3, fill: 2);

        (LoadedCheckpoint? checkpoint, IReadOnlyList<RejectedCheckpoint> rejected) = await _store.FindLatestGoodAsync(Sweep, Trial, default);

        rejected.ShouldBeEmpty();
        checkpoint.ShouldNotBeNull();
        checkpoint.Info.Segment.ShouldBe(1);
        checkpoint.Info.Epoch.ShouldBe(3);
        checkpoint.Info.Metric.ShouldBe(0.75);
        checkpoint.Info.State["optimizer.step"].ShouldBe("120");
        checkpoint.Info.Sha256.ShouldBe(written.Sha256);
        checkpoint.Info.TensorsPath.ShouldBe("checkpoints/sweep-1/trial-7/segment-0001.safetensors");
        CheckpointTensor weight = checkpoint.Tensor("model/fc.weight");
        weight.Shape.ShouldBe([3L, 4L]);
        weight.Data.ToArray().ShouldBe(Floats(12, 2));
        checkpoint.Tensor("optimizer/0/momentum_buffer").Data.ToArray().ShouldBe(Floats(12, 20));
        // The tensors file is ordinary safetensors: Python's safetensors or numpy read it without this project.
        using SafetensorsReader reader = SafetensorsReader.Open(_files.Resolve(written.TensorsPath));
        reader.Metadata["trial"].ShouldBe(Trial);
    }

    [Fact]
    public async Task A_torn_tensors_file_falls_back_to_the_segment_before_it()
    {
        await Write(0, epoch: 1, fill: 1);
        CheckpointInfo torn = await Write(1, epoch: 3, fill: 2);
        string path = _files.Resolve(torn.TensorsPath);
        using (FileStream file = File.OpenWrite(path))
        {
            file.SetLength(file.Length / 2);
        }

        (LoadedCheckpoint? checkpoint, IReadOnlyList<RejectedCheckpoint> rejected) = await _store.FindLatestGoodAsync(Sweep, Trial, default);

        checkpoint.ShouldNotBeNull();
        checkpoint.Info.Segment.ShouldBe(0);
        rejected.Count.ShouldBe(1);
        rejected[0].Segment.ShouldBe(1);
        rejected[0].Reason.ShouldContain("(torn or corrupt)");
    }

    [Fact]
    public async Task A_flipped_bit_a_missing_json_and_unreadable_json_are_each_rejected_with_the_reason()
    {
        await Write(0, epoch: 0, fill: 1);
        CheckpointInfo flipped = await Write(1, epoch: 1, fill: 2);
        await Write(2, epoch: 2, fill: 3);
        await Write(3, epoch: 3, fill: 4);
        byte[] bytes = await File.ReadAllBytesAsync(_files.Resolve(flipped.TensorsPath));
        bytes[^5] ^= 0x10;
        await File.WriteAllBytesAsync(_files.Resolve(flipped.TensorsPath), bytes);
        // Killed after the tensors were renamed into place, before the JSON was.
        File.Delete(_files.Resolve(CheckpointStore.InfoPath(Sweep, Trial, 2)));
        await File.WriteAllTextAsync(_files.Resolve(CheckpointStore.InfoPath(Sweep, Trial, 3)), "{\"format\": 1, \"sweepId\": ");

        (LoadedCheckpoint? checkpoint, IReadOnlyList<RejectedCheckpoint> rejected) = await _store.FindLatestGoodAsync(Sweep, Trial, default);

        checkpoint.ShouldNotBeNull();
        checkpoint.Info.Segment.ShouldBe(0);
        rejected.Select(r => r.Segment).ShouldBe([3, 2, 1]);
        rejected[0].Reason.ShouldContain("is not readable JSON");
        rejected[1].Reason.ShouldBe("checkpoints/sweep-1/trial-7/segment-0002.json is missing (the write did not finish)");
        rejected[2].Reason.ShouldContain("(torn or corrupt)");
    }

    [Fact]
    public async Task A_trial_without_a_good_checkpoint_starts_over()
    {
        (LoadedCheckpoint? none, IReadOnlyList<RejectedCheckpoint> nothing) = await _store.FindLatestGoodAsync(Sweep, Trial, default);
        none.ShouldBeNull();
        nothing.ShouldBeEmpty();

        CheckpointInfo only = await Write(0, epoch: 0, fill: 1);
        File.Delete(_files.Resolve(only.TensorsPath));

        (LoadedCheckpoint? checkpoint, IReadOnlyList<RejectedCheckpoint> rejected) = await _store.FindLatestGoodAsync(Sweep, Trial, default);
        checkpoint.ShouldBeNull();
        rejected.Single().Reason.ShouldBe("checkpoints/sweep-1/trial-7/segment-0000.safetensors is missing");
    }

    [Fact]
    public async Task A_json_copied_from_another_segment_is_not_taken_for_this_one()
    {
        await Write(0, epoch: 0, fill: 1);
        await Write(1, epoch: 1, fill: 2);
        File.Copy(_files.Resolve(CheckpointStore.InfoPath(Sweep, Trial, 0)), _files.Resolve(CheckpointStore.InfoPath(Sweep, Trial, 1)), overwrite: true);

        (LoadedCheckpoint? checkpoint, IReadOnlyList<RejectedCheckpoint> rejected) = await _store.FindLatestGoodAsync(Sweep, Trial, default);

        checkpoint!.Info.Segment.ShouldBe(0);
        rejected.Single().Reason.ShouldBe("checkpoints/sweep-1/trial-7/segment-0001.json describes another checkpoint");
    }

    [Fact]
    public async Task A_redelivered_segment_replaces_its_checkpoint_and_retention_keeps_only_what_it_is_told()
    {
        await Write(0, epoch: 0, fill: 1);
        await Write(1, epoch: 1, fill: 2);
        await Write(2, epoch: 2, fill: 3);
        await Write(2, epoch: 2, fill: 5);

        (LoadedCheckpoint? latest, _) = await _store.FindLatestGoodAsync(Sweep, Trial, default);
        latest!.Tensor("model/fc.weight").Data.ToArray().ShouldBe(Floats(12, 5));

        long freed = _store.Retain(Sweep, Trial, new HashSet<int> { 1 });

        freed.ShouldBeGreaterThan(2 * 12 * 4);
        _store.Segments(Sweep, Trial).ShouldBe([1]);
        _files.List(CheckpointStore.TrialDirectory(Sweep, Trial)).Count().ShouldBe(2);
    }

    [Fact]
    public async Task Bad_ids_and_tensors_are_refused_before_anything_is_written()
    {
        Should.Throw<ArgumentException>(() => CheckpointStore.TrialDirectory("../x", Trial))
            .Message.ShouldBe("sweep id '../x' must be letters, digits, '-', '_' or '.' (and not start with '.')");
        var info = new CheckpointInfo { SweepId = Sweep, TrialId = Trial, Segment = 0, Epoch = 0 };
        CheckpointTensor wrong = new("model/w", SafetensorsDtype.F32, [2, 2], new byte[12]);

        (await Should.ThrowAsync<ArgumentException>(() => _store.WriteAsync(info, [wrong], default)))
            .Message.ShouldBe("tensor 'model/w' has 12 bytes; its dtype and shape need 16");
        _store.Segments(Sweep, Trial).ShouldBeEmpty();
    }

    private Task<CheckpointInfo> Write(int segment, int epoch, float fill) =>
        _store.WriteAsync(
            new CheckpointInfo
            {
                SweepId = Sweep,
                TrialId = Trial,
                Segment = segment,
                Epoch = epoch,
                Metric = 0.75,
                State = new Dictionary<string, string> { ["optimizer.step"] = "120" },
            },
            [
                new CheckpointTensor("model/fc.weight", SafetensorsDtype.F32, [3, 4], Floats(12, fill)),
                new CheckpointTensor("optimizer/0/momentum_buffer", SafetensorsDtype.F32, [3, 4], Floats(12, fill * 10)),
            ],
            default);

    private static byte[] Floats(int count, float start)
    {
        float[] values = [.. Enumerable.Range(0, count).Select(i => start + i * 0.5f)];
        byte[] bytes = new byte[count * 4];
        Buffer.BlockCopy(values, 0, bytes, 0, bytes.Length);
        return bytes;
    }
}
