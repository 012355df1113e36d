using System.Collections;
using System.Runtime.InteropServices;
using Cluster.GpuWorker.Devices;
using Shouldly;

namespace Cluster.GpuWorker.Tests.Devices;

public sealed partial class NativeHeapTests
{
    [Fact]
    public void After_KeepFreedBlocks_an_activation_sized_block_comes_from_the_heap_not_from_a_fresh_mmap()
    {
        if (!OperatingSystem.IsLinux())
        {
            return; // glibc's malloc only; the call is a no-op elsewhere
        }
        NativeHeap.KeepFreedBlocks().ShouldBeTrue("this process's environment does not tune glibc's malloc, so the settings apply");

        // 48 MB: above glibc's largest mmap threshold (32 MiB), so by default it would be mmapped, and unmapped on free.
        const int Bytes = 48 << 20;
        nuint mmappedBefore = MallInfo2().MmappedBytes;
        unsafe
        {
            void* block = NativeMemory.Alloc(Bytes);
            try
            {
                nuint mmappedWhileHeld = MallInfo2().MmappedBytes;
                ((long)mmappedWhileHeld - (long)mmappedBefore).ShouldBeLessThan(Bytes, "the block was served by mmap");
            }
            finally
            {
                NativeMemory.Free(block);
            }
        }
    }

    [Fact]
    public void An_operators_own_malloc_tuning_in_the_environment_is_left_alone()
    {
        NativeHeap.MallocTunedByEnvironment(new Hashtable { ["PATH"] = "/usr/bin", ["GLIBC_TUNABLES"] = "glibc.rtld.nns=4" }).ShouldBeFalse();
        NativeHeap.MallocTunedByEnvironment(new Hashtable { ["GLIBC_TUNABLES"] = "glibc.malloc.arena_max=2" }).ShouldBeTrue();
        NativeHeap.MallocTunedByEnvironment(new Hashtable { ["MALLOC_MMAP_THRESHOLD_"] = "131072" }).ShouldBeTrue();
        NativeHeap.MallocTunedByEnvironment(new Hashtable { ["MALLOC_ARENA_MAX"] = "2" }).ShouldBeTrue();
    }

    private static MallocInfo MallInfo2() => MallInfo2Native();

    [LibraryImport("libc", EntryPoint = "mallinfo2")]
    private static partial MallocInfo MallInfo2Native();

    // glibc's struct mallinfo2 (2.33+): ten size_t fields; hblkhd is the number of bytes in mmapped blocks.
    [StructLayout(LayoutKind.Sequential)]
    private readonly struct MallocInfo
    {
        public readonly nuint Arena;
        public readonly nuint OrdinaryBlocks;
        public readonly nuint SmallBlocks;
        public readonly nuint MmappedBlocks;
        public readonly nuint MmappedBytes;
        public readonly nuint UsmBlocks;
        public readonly nuint FastBinBytes;
        public readonly nuint AllocatedBytes;
        public readonly nuint FreeBytes;
        public readonly nuint KeepCost;
    }
}
