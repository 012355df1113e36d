using System.Runtime.InteropServices;

namespace Cluster.GpuWorker.Devices;

/// <summary>
/// Hands memory that native code has freed back to the operating system. libtorch allocates and frees
/// activation-sized blocks (megabytes) on every batch from several threads; glibc keeps freed blocks in its
/// per-thread arenas, and with its dynamic mmap threshold most of them land there rather than in mmapped
/// chunks, so a long extraction's resident memory creeps upward even though nothing is leaked (measured:
/// +130 MiB over 70,000 images, with the managed heap flat; BENCHMARKS.md).
/// </summary>
/// <remarks>
/// malloc_trim releases the free pages of every arena. It costs a few milliseconds, so it runs once per shard,
/// not per batch. Forcing small mmap thresholds instead (MALLOC_MMAP_THRESHOLD_) also keeps memory flat but
/// turns every activation into fresh zeroed pages: it cut the extraction rate to a quarter here.
/// </remarks>
public static partial class NativeHeap
{
    private static bool s_unavailable = !OperatingSystem.IsLinux();

    /// <summary>Returns free native heap pages to the OS; a no-op where the C library has no malloc_trim (musl, macOS, Windows).</summary>
    public static void ReleaseFreedMemory()
    {
        if (s_unavailable)
        {
            return;
        }
        try
        {
            _ = MallocTrim(0);
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            s_unavailable = true;
        }
    }

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);
}
