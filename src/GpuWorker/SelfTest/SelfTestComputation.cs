using System.Diagnostics;
using Cluster.Contracts.SelfTest;
using Cluster.GpuWorker.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.SelfTest;

/// <summary>The outcome of <see cref="SelfTestComputation"/>.</summary>
public sealed record SelfTestOutcome(string OutputShape, double Checksum, double Milliseconds, string TorchVersion);

/// <summary>
/// A small, deterministic stack of convolutions (inputs and weights are closed-form, no RNG), so that the
/// coordinator can recompute the expected checksum and compare it with what a worker recorded. Both compute through
/// checked kernels (<see cref="KernelVerifier"/>): two copies of one wrong kernel would agree with each other.
/// </summary>
public static class SelfTestComputation
{
    private const int Channels = 16;

    public static SelfTestOutcome Run(RunSelfTest job, Device device, KernelVerifier verifier, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(verifier);
        if (job.ImageSize is < 4 or > 1024)
        {
            throw new ArgumentOutOfRangeException(nameof(job), job.ImageSize, "ImageSize must be within 4..1024.");
        }
        if (job.Layers is < 1 or > 1_000_000)
        {
            throw new ArgumentOutOfRangeException(nameof(job), job.Layers, "Layers must be within 1..1,000,000.");
        }
        var clock = Stopwatch.StartNew();
        var router = new ConvolutionRouter();
        ConvolutionGeometry first = Geometry(3), rest = Geometry(Channels);
        router.Use(verifier.RoutesFor(new[] { first, rest }.Select(g => new ConvolutionConfig(g, 1, job.ImageSize, job.ImageSize,
            ScalarType.Float32, TensorLayout.Contiguous, TensorLayout.Contiguous, device.ToString(), get_num_threads(), KernelPass.Forward))));
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        Tensor x = linspace(-1.0, 1.0, 3L * job.ImageSize * job.ImageSize, dtype: float32, device: device)
            .reshape(1, 3, job.ImageSize, job.ImageSize);
        for (int layer = 0; layer < job.Layers; layer++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            // A dispose scope per layer keeps memory flat however many layers a job asks for.
            using var layerScope = NewDisposeScope();
            int inChannels = layer == 0 ? 3 : Channels;
            Tensor weight = sin(arange(Channels * inChannels * 9, dtype: float32, device: device) * (0.37 + (layer % 7) * 0.01))
                .reshape(Channels, inChannels, 3, 3) / Math.Sqrt(inChannels * 9);
            Tensor previous = x;
            x = nn.functional.relu(router.Conv2d(x, weight, null, layer == 0 ? first : rest)).MoveToOuterDisposeScope();
            previous.Dispose();
        }
        string shape = string.Join("x", x.shape);
        double checksum = x.to(float64).sum().item<double>();
        return new SelfTestOutcome(shape, checksum, clock.Elapsed.TotalMilliseconds, torch.__version__);
    }

    private static ConvolutionGeometry Geometry(long inChannels) => new(inChannels, Channels, 3, 3, 1, 1, 1, 1, 1, 1, 1, HasBias: false);
}
