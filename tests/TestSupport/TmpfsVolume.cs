namespace Cluster.TestSupport;

/// <summary>
/// A real small file system for a test (tmpfs, mounted with <see cref="FactWhenMountableAttribute"/>'s rights): to fill
/// up (ENOSPC) or remount read-only (EROFS) under code that writes to it. Disposing unmounts it (lazily, so a process
/// still holding a file there cannot keep it mounted) and removes the folder it made.
/// </summary>
public sealed class TmpfsVolume : IDisposable
{
    private readonly bool _ownsFolder;

    private TmpfsVolume(string path, bool ownsFolder)
    {
        Path = path;
        _ownsFolder = ownsFolder;
    }

    public string Path { get; }

    /// <summary>Mounts a tmpfs of <paramref name="size"/> (mount's syntax: "1m", "768m") at <paramref name="at"/>, or at a
    /// new temporary folder of its own.</summary>
    public static TmpfsVolume Mount(string size, string? at = null)
    {
        string path = at ?? Directory.CreateTempSubdirectory("tmpfs-volume-").FullName;
        Directory.CreateDirectory(path);
        ExternalCommand.Result mount = ExternalCommand.Run("mount", "-t", "tmpfs", "-o", $"size={size}", "tmpfs", path);
        if (mount.ExitCode != 0)
        {
            throw new InvalidOperationException($"mount -t tmpfs at {path} failed (exit {mount.ExitCode}): {mount.Error}");
        }
        return new TmpfsVolume(path, ownsFolder: at is null);
    }

    /// <summary>"ro" or "rw".</summary>
    public void Remount(string mode)
    {
        ExternalCommand.Result remount = ExternalCommand.Run("mount", "-o", $"remount,{mode}", Path);
        if (remount.ExitCode != 0)
        {
            throw new InvalidOperationException($"remount,{mode} of {Path} failed (exit {remount.ExitCode}): {remount.Error}");
        }
    }

    /// <summary>
    /// Writes the file <paramref name="name"/> until the volume has no block left, so that any further write fails,
    /// however small. Returns its path: deleting it gives the space back.
    /// </summary>
    public async Task<string> FillAsync(string name = "filler")
    {
        string filler = System.IO.Path.Combine(Path, name);
        // Unbuffered: the write that fails is the last one, and closing the file has nothing left to flush.
        await using var stream = new FileStream(filler, FileMode.Create, FileAccess.Write, FileShare.None, bufferSize: 0);
        // A short write takes what is left, so blocks of any size fill it to the last page.
        byte[] block = new byte[1 << 20];
        try
        {
            while (true)
            {
                await stream.WriteAsync(block);
            }
        }
        catch (IOException e) when (e.HResult == 28)
        {
            // ENOSPC: full.
        }
        return filler;
    }

    public void Dispose()
    {
        ExternalCommand.Run("umount", "-l", Path);
        if (_ownsFolder)
        {
            Directory.Delete(Path, recursive: true);
        }
    }
}
