using System.Runtime.InteropServices;
using TorchSharp;

namespace Cluster.GpuWorker.Devices;

/// <summary>Process-wide libtorch settings, applied once before the first tensor work.</summary>
public static partial class TorchRuntime
{
    private static int s_initialized;

    /// <summary>
    /// Keeps freed native blocks in the C library's heap for reuse (<see cref="NativeHeap.KeepFreedBlocks"/>), and
    /// turns NNPACK off. On CPUs NNPACK does not support (this project's CI machines among them) libtorch
    /// logs "Could not initialize NNPACK! Reason: Unsupported hardware." on every convolution, burying real
    /// output; and where it is supported, oneDNN is the faster CPU path for our batch sizes anyway.
    /// TorchSharp exposes no switch for it, so this calls libtorch's own at::globalContext().setUserEnabledNNPACK(false)
    /// (Itanium C++ ABI: `this` is the first argument). Missing symbols (another libtorch) leave things as they are.
    /// </summary>
    public static void Initialize()
    {
        if (Interlocked.Exchange(ref s_initialized, 1) == 1)
        {
            return;
        }
        if (!OperatingSystem.IsLinux())
        {
            return;
        }
        // Before libtorch allocates its first activation.
        NativeHeap.KeepFreedBlocks();
        try
        {
            // Loads libtorch through TorchSharp first, so the calls below bind to the same library.
            _ = torch.__version__;
            SetUserEnabledNnpack(GlobalContext(), false);
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            // Not fatal: only the warnings stay.
        }
    }

    [LibraryImport("libtorch_cpu", EntryPoint = "_ZN2at13globalContextEv")]
    private static partial IntPtr GlobalContext();

    [LibraryImport("libtorch_cpu", EntryPoint = "_ZN2at7Context20setUserEnabledNNPACKEb")]
    private static partial void SetUserEnabledNnpack(IntPtr context, [MarshalAs(UnmanagedType.U1)] bool enabled);
}
