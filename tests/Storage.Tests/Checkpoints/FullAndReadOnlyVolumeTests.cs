using Cluster.Storage.Checkpoints;
using Cluster.Storage.Files;
using Cluster.Storage.Formats;
using Cluster.TestSupport;
using Shouldly;

namespace Cluster.Storage.Tests.Checkpoints;

/// <summary>
/// The shared volume full (ENOSPC) or read-only while a checkpoint or a shard is written, for real: a 1 MiB tmpfs
/// mounted for the test. The write fails with the system's error, leaves no file behind (no torn tensors, no temporary
/// file, no JSON naming a missing file), and the same write succeeds once space returns or the volume is writable again.
/// </summary>
public sealed class FullAndReadOnlyVolumeTests : IDisposable
{
    private const string Sweep = "sweep-1";
    private const string Trial = "trial-7";
    private TmpfsVolume? _volume;

    private string MountPath => _volume!.Path;

    public void Dispose() => _volume?.Dispose();

    private FileStore Mount()
    {
        _volume = TmpfsVolume.Mount("1m");
        return new FileStore(Path.Combine(_volume.Path, "storage"));
    }

    private void Remount(string mode) => _volume!.Remount(mode);

    /// <summary>A checkpoint of about 600 KiB: more than a volume with 700 KiB taken can hold.</summary>
    private static Task<CheckpointInfo> WriteCheckpoint(CheckpointStore store) =>
        store.WriteAsync(
            new CheckpointInfo { SweepId = Sweep, TrialId = Trial, Segment = 0, Epoch = 1, Metric = 0.5 },
            [new CheckpointTensor("model/fc.weight", SafetensorsDtype.F32, [150, 1024], new byte[150 * 1024 * 4])],
            default);

    private string[] Files() => [.. Directory.GetFiles(MountPath, "*", SearchOption.AllDirectories).Select(f => Path.GetRelativePath(MountPath, f)).Order()];

    [FactWhenMountable]
    public async Task A_checkpoint_written_to_a_full_volume_fails_leaves_nothing_and_is_written_once_space_returns()
    {
        FileStore files = Mount();
        var store = new CheckpointStore(files);
        await File.WriteAllBytesAsync(Path.Combine(MountPath, "filler"), new byte[700 * 1024]);

        IOException full = await Should.ThrowAsync<IOException>(() => WriteCheckpoint(store));

        full.Message.ShouldContain("No space left on device");
        Files().ShouldBe(["filler"], "no torn tensors file, no temporary file, no JSON");
        store.Segments(Sweep, Trial).ShouldBeEmpty();

        File.Delete(Path.Combine(MountPath, "filler"));
        CheckpointInfo written = await WriteCheckpoint(store);
        (LoadedCheckpoint? loaded, string? reason) = await store.TryLoadAsync(Sweep, Trial, 0, default);
        reason.ShouldBeNull();
        loaded!.Info.Sha256.ShouldBe(written.Sha256);
    }

    [FactWhenMountable]
    public async Task A_shard_written_to_a_read_only_volume_fails_leaves_nothing_and_is_written_once_it_is_writable()
    {
        FileStore files = Mount();
        Directory.CreateDirectory(files.Resolve("features/k"));
        Remount("ro");

        await Should.ThrowAsync<IOException>(() => files.WriteWithSha256Async("features/k/shard-00000.safetensors",
            (stream, token) => stream.WriteAsync(new byte[4096], token).AsTask(), default));

        Files().ShouldBeEmpty();
        Remount("rw");
        string sha = await files.WriteWithSha256Async("features/k/shard-00000.safetensors",
            (stream, token) => stream.WriteAsync(new byte[4096], token).AsTask(), default);
        sha.ShouldBe(Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(new byte[4096])));
        Files().ShouldBe(["storage/features/k/shard-00000.safetensors"]);
    }
}
