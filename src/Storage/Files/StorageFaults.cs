namespace Cluster.Storage.Files;

/// <summary>
/// The faults of a volume rather than of the work written to it: full (ENOSPC), over quota (EDQUOT) or read-only
/// (EROFS). The same write succeeds once an operator frees space or remounts the volume, so a job that meets one waits
/// and tries again instead of failing (<c>StorageWait</c> in the worker). Writes are atomic, so the failed attempt left
/// nothing behind to clean up.
/// </summary>
public static class StorageFaults
{
    // Linux errno values; .NET's IOException carries the raw errno as its HResult for these.
    private const int NoSpace = 28;
    private const int ReadOnlyFileSystem = 30;
    private const int QuotaExceeded = 122;

    /// <summary>The full, over-quota or read-only volume error in <paramref name="e"/> or its inner exceptions, else null.</summary>
    public static IOException? VolumeFault(Exception? e)
    {
        for (; e is not null; e = e.InnerException)
        {
            if (e is AggregateException { InnerExceptions.Count: 1 } aggregate)
            {
                return VolumeFault(aggregate.InnerExceptions[0]);
            }
            if (e is IOException io && io.HResult is NoSpace or ReadOnlyFileSystem or QuotaExceeded)
            {
                return io;
            }
        }
        return null;
    }

    /// <summary>
    /// The fault by its kind ("No space left on device"), without the file it met: two writes that met the same fault
    /// are described alike, whatever their paths.
    /// </summary>
    public static string Describe(IOException fault)
    {
        ArgumentNullException.ThrowIfNull(fault);
        return fault.HResult switch
        {
            NoSpace => "No space left on device",
            ReadOnlyFileSystem => "Read-only file system",
            QuotaExceeded => "Disk quota exceeded",
            _ => fault.Message,
        };
    }

    /// <summary>
    /// Writes, flushes and deletes a file of <paramref name="bytes"/> in <paramref name="store"/>'s root (what a job that
    /// met a volume fault polls before it tries again): null when that worked, else what stopped it (the volume fault by
    /// its kind, or the permission refused), so that a waiting job can say when the reason changes (a full volume
    /// remounted read-only, say).
    /// </summary>
    public static string? ProbeWrite(FileStore store, int bytes = 64 * 1024)
    {
        ArgumentNullException.ThrowIfNull(store);
        string probe = Path.Combine(store.Root, $".write-probe-{Environment.ProcessId}-{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(probe, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                stream.Write(new byte[bytes]);
                stream.Flush(flushToDisk: true);
            }
            return null;
        }
        catch (Exception e) when (VolumeFault(e) is IOException fault)
        {
            return Describe(fault);
        }
        catch (UnauthorizedAccessException)
        {
            return $"permission to write in '{store.Root}' denied";
        }
        finally
        {
            try
            {
                File.Delete(probe);
            }
            catch (IOException)
            {
                // Read-only: nothing was created to delete.
            }
        }
    }
}
