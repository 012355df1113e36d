using Cluster.Storage.Files;
using Cluster.TestSupport;
using Shouldly;

namespace Cluster.Storage.Tests.Files;

/// <summary>The volume faults a job waits out, as the kernel reports them on a real tmpfs mounted for the test.</summary>
public sealed class StorageFaultsTests : IDisposable
{
    private readonly string _mount = Directory.CreateTempSubdirectory("volume-faults-").FullName;
    private bool _mounted;

    public void Dispose()
    {
        if (_mounted)
        {
            ExternalCommand.Run("umount", _mount);
        }
        Directory.Delete(_mount, recursive: true);
    }

    private FileStore Mount()
    {
        ExternalCommand.Run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", _mount).ExitCode.ShouldBe(0);
        _mounted = true;
        return new FileStore(Path.Combine(_mount, "storage"));
    }

    private static Task Write(FileStore files, int bytes) =>
        files.WriteAsync("features/k/shard-00000.safetensors", (stream, token) => stream.WriteAsync(new byte[bytes], token).AsTask(), default);

    [FactWhenMountable]
    public async Task A_full_volume_is_a_volume_fault_and_is_writable_again_once_space_returns()
    {
        FileStore files = Mount();
        string filler = Path.Combine(_mount, "filler");
        await File.WriteAllBytesAsync(filler, new byte[1000 * 1024]);

        IOException full = await Should.ThrowAsync<IOException>(() => Write(files, 200 * 1024));

        StorageFaults.VolumeFault(full).ShouldBeSameAs(full);
        StorageFaults.VolumeFault(new InvalidOperationException("wrapped", full)).ShouldBeSameAs(full, "found inside what wraps it");
        StorageFaults.CanWrite(files).ShouldBeFalse();
        File.Delete(filler);
        StorageFaults.CanWrite(files).ShouldBeTrue();
        Directory.GetFiles(files.Root, "*", SearchOption.AllDirectories).ShouldBeEmpty("the probe cleans up after itself");
    }

    [FactWhenMountable]
    public async Task A_read_only_volume_is_a_volume_fault_and_other_errors_are_not()
    {
        FileStore files = Mount();
        ExternalCommand.Run("mount", "-o", "remount,ro", _mount).ExitCode.ShouldBe(0);

        IOException readOnly = await Should.ThrowAsync<IOException>(() => Write(files, 4096));

        StorageFaults.VolumeFault(readOnly).ShouldBeSameAs(readOnly);
        StorageFaults.CanWrite(files).ShouldBeFalse();
        ExternalCommand.Run("mount", "-o", "remount,rw", _mount).ExitCode.ShouldBe(0);
        StorageFaults.CanWrite(files).ShouldBeTrue();
        StorageFaults.VolumeFault(new FileNotFoundException("no such file")).ShouldBeNull();
        StorageFaults.VolumeFault(new IOException("some other error", 5)).ShouldBeNull();
    }
}
