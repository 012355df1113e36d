using Cluster.GpuWorker.Kernels;
using Cluster.GpuWorker.Models;
using TorchSharp;

namespace Cluster.GpuWorker.Tests.Kernels;

/// <summary>
/// The kernel check the tests prepare models with. Its verdicts live in a folder of this test run only: every run
/// checks the kernels of its machine afresh, as a worker on a new machine does, and the tests of one run share them.
/// </summary>
internal static class TestKernels
{
    private static readonly Lazy<KernelVerifier> s_verifier =
        new(() => new KernelVerifier(new KernelVerifierOptions { CacheDirectory = Cluster.TestSupport.RunFolder.Create("cluster-test-kernels") }));

    public static KernelVerifier Verifier => s_verifier.Value;

    /// <summary>A plan for batches of <paramref name="batch"/> on the calling thread's libtorch threads.</summary>
    public static KernelPlan Plan(int inputSize, long batch, string? tap = null) => new(inputSize, [batch], torch.get_num_threads(), tap);

    public static InferenceModel Prepare(Backbone backbone, string precision, int inputSize, long batch, bool fold = true) =>
        InferenceModel.Prepare(backbone, precision, torch.CPU, Verifier, Plan(inputSize, batch), fold);
}
