using Cluster.Storage.Files;
using Cluster.TestSupport;
using Shouldly;

namespace Cluster.Storage.Tests.Files;

/// <summary>The volume faults a job waits out, as the kernel reports them on a real tmpfs mounted for the test.</summary>
public sealed class StorageFaultsTests : IDisposable
{
    private TmpfsVolume? _volume;

    public void Dispose() => _volume?.Dispose();

    private FileStore Mount()
    {
        _volume = TmpfsVolume.Mount("1m");
        return new FileStore(Path.Combine(_volume.Path, "storage"));
    }

    private static Task Write(FileStore files, int bytes) =>
        files.WriteAsync("features/k/shard-00000.safetensors", (stream, token) => stream.WriteAsync(new byte[bytes], token).AsTask(), default);

    [FactWhenMountable]
    public async Task A_full_volume_is_a_volume_fault_and_is_writable_again_once_space_returns()
    {
        FileStore files = Mount();
        string filler = Path.Combine(_volume!.Path, "filler");
        await File.WriteAllBytesAsync(filler, new byte[1000 * 1024]);

        IOException full = await Should.ThrowAsync<IOException>(() => Write(files, 200 * 1024));

        StorageFaults.VolumeFault(full).ShouldBeSameAs(full);
        StorageFaults.VolumeFault(new InvalidOperationException("wrapped", full)).ShouldBeSameAs(full, "found inside what wraps it");
        StorageFaults.ProbeWrite(files).ShouldBe("No space left on device", "the fault by its kind, not the probe's path");
        StorageFaults.Describe(full).ShouldBe(StorageFaults.ProbeWrite(files), "the job's write and the probe describe one fault alike");
        File.Delete(filler);
        StorageFaults.ProbeWrite(files).ShouldBeNull();
        Directory.GetFiles(files.Root, "*", SearchOption.AllDirectories).ShouldBeEmpty("the probe cleans up after itself");
    }

    [FactWhenMountable]
    public async Task A_read_only_volume_is_a_volume_fault_and_other_errors_are_not()
    {
        FileStore files = Mount();
        _volume!.Remount("ro");

        IOException readOnly = await Should.ThrowAsync<IOException>(() => Write(files, 4096));

        StorageFaults.VolumeFault(readOnly).ShouldBeSameAs(readOnly);
        StorageFaults.ProbeWrite(files).ShouldBe("Read-only file system");
        _volume.Remount("rw");
        StorageFaults.ProbeWrite(files).ShouldBeNull();
        StorageFaults.VolumeFault(new FileNotFoundException("no such file")).ShouldBeNull();
        StorageFaults.VolumeFault(new IOException("some other error", 5)).ShouldBeNull();
    }
}
