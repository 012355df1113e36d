using Cluster.GpuWorker.Devices;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Kernels;

/// <summary>
/// A few convolution configurations every worker checks when it starts, before any job asks for them: those oneDNN
/// got wrong or crashed on (the 1×1 channels-last ResNet shortcuts and bottlenecks on Zen 5) and common 3×3 and stem
/// ones, in float32 and bf16, at batch 32 on the lanes' threads. So a worker's heartbeat and `coordinator selftest`
/// say from the start whether its kernels can be trusted, and the first extraction on a new machine is checked faster.
/// </summary>
public static class KernelCanary
{
    public static IReadOnlyList<ConvolutionConfig> Configs(int threads, string device = "cpu")
    {
        ConvolutionConfig At(ConvolutionGeometry g, long size, ScalarType type) =>
            new(g, 32, size, size, type, TensorLayout.ChannelsLast, TensorLayout.ChannelsLast, device, threads, KernelPass.Forward);
        static ConvolutionGeometry Conv(long cin, long cout, long k, long stride) =>
            new(cin, cout, k, k, stride, stride, k / 2, k / 2, 1, 1, 1, HasBias: true);
        return
        [
            At(Conv(256, 512, 1, 2), 14, ScalarType.Float32),   // ResNet-18/34 layer4.0 shortcut: wrong on Zen 5
            At(Conv(128, 512, 1, 1), 28, ScalarType.Float32),   // ResNet-50 layer2 expansion: wrong on Zen 5
            At(Conv(512, 1024, 1, 2), 28, ScalarType.Float32),  // ResNet-50 layer3.0 shortcut: SIGFPE on Zen 5
            At(Conv(64, 64, 3, 1), 56, ScalarType.Float32),
            At(Conv(256, 256, 3, 1), 14, ScalarType.Float32),
            At(Conv(3, 64, 7, 2), 224, ScalarType.Float32),
            At(Conv(256, 1024, 1, 1), 14, ScalarType.BFloat16), // SIGFPE on Zen 5
            At(Conv(128, 128, 3, 1), 28, ScalarType.BFloat16),
        ];
    }
}

/// <summary>Checks <see cref="KernelCanary"/> in the background when a CPU worker starts; jobs do not wait for it.</summary>
public sealed class KernelCanaryService(KernelVerifier verifier, TorchDevice device, LaneLayout lanes, ILogger<KernelCanaryService> logger) : BackgroundService
{
    protected override Task ExecuteAsync(CancellationToken stoppingToken) => device.IsCuda
        ? Task.CompletedTask
        : Task.Run(() =>
        {
            try
            {
                verifier.Resolve(KernelCanary.Configs(lanes.ThreadsPerLane));
                logger.LogInformation("Kernel check at start: {Summary}", verifier.Report.Summary);
            }
            catch (KernelCheckException e)
            {
                // A job's own check will say it again, with the model it concerns.
                logger.LogError("Kernel check at start failed: {Reason}", e.Message);
            }
        }, stoppingToken);
}
