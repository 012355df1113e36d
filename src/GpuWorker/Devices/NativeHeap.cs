using System.Runtime.InteropServices;

namespace Cluster.GpuWorker.Devices;

/// <summary>
/// How the C library's heap treats the memory libtorch allocates and frees: activation-sized blocks (megabytes,
/// tens of megabytes at batch 32) on every layer of every batch, from several threads.
/// </summary>
/// <remarks>
/// <para>
/// glibc serves blocks above its mmap threshold (128 KiB, raised dynamically up to 32 MiB) with a fresh mmap and
/// gives them back with munmap on free, so every forward pass page-faults its largest activations in again and the
/// kernel zeroes them (ResNet-18's first activation at batch 32 in bf16 is 51 MB, above any threshold). Measured on
/// the 2-core bench machine: 15% of the CPU time of a bf16 extraction in the kernel, and ResNet-18 forward-only at
/// 95 images/s; with freed blocks kept in the heap (<see cref="KeepFreedBlocks"/>), 109 images/s and a quarter of
/// the kernel time (BENCHMARKS.md).
/// </para>
/// <para>
/// Kept blocks are reused by the next batch, so the heap stays at one batch's working set per thread; what is free
/// between shards goes back to the OS with <see cref="ReleaseFreedMemory"/> (malloc_trim releases free pages of every
/// arena, wherever they lie). Forcing small mmap thresholds instead (MALLOC_MMAP_THRESHOLD_) turns every activation
/// into fresh zeroed pages: it cut the extraction rate to a quarter.
/// </para>
/// </remarks>
public static partial class NativeHeap
{
    // glibc's <malloc.h>.
    private const int MallocTrimThreshold = -1;
    private const int MallocMmapMax = -4;
    private const int MallocPerturb = -6;

    private static bool s_unavailable = !OperatingSystem.IsLinux();

    /// <summary>
    /// Makes the C library keep freed blocks for reuse instead of unmapping them or trimming the heap after every
    /// free: no mmap-served blocks, no automatic trimming. Left alone when the environment already tunes glibc's
    /// malloc (GLIBC_TUNABLES with glibc.malloc.*, or a MALLOC_* variable such as MALLOC_MMAP_MAX_): an operator's
    /// choice wins. Returns whether the settings were applied. A no-op off glibc (musl's mallopt does nothing;
    /// macOS and Windows have none).
    /// </summary>
    public static bool KeepFreedBlocks()
    {
        if (s_unavailable || MallocTunedByEnvironment(Environment.GetEnvironmentVariables()))
        {
            return false;
        }
        try
        {
            // glibc returns 1 on success. Trimming happens per shard instead (ReleaseFreedMemory).
            bool noMmap = Mallopt(MallocMmapMax, 0) == 1;
            bool noAutomaticTrim = Mallopt(MallocTrimThreshold, int.MaxValue) == 1;
            return noMmap && noAutomaticTrim;
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            s_unavailable = true;
            return false;
        }
    }

    /// <summary>
    /// Fills every block malloc hands out with 0x7F bytes (3.4e38 as float32, a huge value as bfloat16 and float64) and
    /// every freed one with 0x80 (glibc's M_PERTURB): memory a kernel reads without having written it then gives a wrong
    /// result every time, not only when the block happens to hold garbage. For kernel probes only (it costs a memset
    /// per allocation). Returns whether it was applied.
    /// </summary>
    public static bool PoisonNewBlocks()
    {
        if (s_unavailable)
        {
            return false;
        }
        try
        {
            // M_PERTURB p: allocations are filled with p ^ 0xFF, freed blocks with p.
            return Mallopt(MallocPerturb, 0x80) == 1;
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            s_unavailable = true;
            return false;
        }
    }

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

    /// <summary>Whether <paramref name="environment"/> sets any of glibc's malloc tunables.</summary>
    internal static bool MallocTunedByEnvironment(System.Collections.IDictionary environment)
    {
        foreach (System.Collections.DictionaryEntry entry in environment)
        {
            string name = (string)entry.Key;
            if ((name == "GLIBC_TUNABLES" && (entry.Value as string)?.Contains("glibc.malloc.", StringComparison.Ordinal) == true)
                || name.StartsWith("MALLOC_", StringComparison.Ordinal))
            {
                return true;
            }
        }
        return false;
    }

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);

    [LibraryImport("libc", EntryPoint = "mallopt")]
    private static partial int Mallopt(int parameter, int value);
}
