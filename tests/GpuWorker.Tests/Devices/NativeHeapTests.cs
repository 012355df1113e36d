using System.Collections;
using System.Runtime.InteropServices;
using Cluster.GpuWorker.Devices;
using Shouldly;

namespace Cluster.GpuWorker.Tests.Devices;

public sealed class NativeHeapTests
{
    [Fact]
    public void After_KeepFreedBlocks_an_activation_sized_block_comes_from_the_heap_not_from_a_fresh_mmap()
    {
        if (!OperatingSystem.IsLinux() || NativeHeap.MallocTunedByEnvironment(Environment.GetEnvironmentVariables()))
        {
            return; // glibc's malloc only, and not where the environment tunes it (then the call leaves it alone)
        }
        NativeHeap.KeepFreedBlocks().ShouldBeTrue();

        // 48 MB: above glibc's largest mmap threshold (32 MiB), so by default it would be mmapped, and unmapped on free.
        const int Bytes = 48 << 20;
        unsafe
        {
            void* block = NativeMemory.Alloc(Bytes);
            try
            {
                // glibc's chunk header is the size word just before the block; its bit 1 (IS_MMAPPED) marks a block
                // served by a mmap of its own. Read from the block itself, so other tests' allocations cannot interfere.
                nuint header = *((nuint*)block - 1);
                ((ulong)(header & 2)).ShouldBe(0UL, "the block was served by mmap");
                ((ulong)(header & ~(nuint)7)).ShouldBeGreaterThanOrEqualTo((ulong)Bytes, "the size word is where glibc keeps it");
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
}
