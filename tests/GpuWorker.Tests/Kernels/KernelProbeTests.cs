using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Kernels;
using Shouldly;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Kernels;

/// <summary>The probe itself, in this process: it passes right kernels and catches wrong ones, forward and backward.</summary>
public sealed class KernelProbeTests
{
    private static readonly ConvolutionGeometry s_pointwise = new(32, 48, 1, 1, 2, 2, 0, 0, 1, 1, 1, HasBias: true);
    private static readonly ConvolutionGeometry s_threeByThree = new(16, 24, 3, 3, 1, 1, 1, 1, 1, 1, 1, HasBias: false);

    public KernelProbeTests() => TorchRuntime.Initialize();

    private static ConvolutionConfig Config(ConvolutionGeometry g, KernelPass pass = KernelPass.Forward, ScalarType type = ScalarType.Float32) =>
        new(g, 6, 14, 14, type, TensorLayout.ChannelsLast, TensorLayout.ChannelsLast, "cpu", get_num_threads(), pass);

    [Theory]
    [InlineData(ConvolutionPath.Pointwise, KernelPass.Forward)]
    [InlineData(ConvolutionPath.Pointwise, KernelPass.Backward)]
    [InlineData(ConvolutionPath.Unfold, KernelPass.Forward)]
    [InlineData(ConvolutionPath.Unfold, KernelPass.Backward)]
    public void A_right_path_passes_with_float32_rounding_error(ConvolutionPath path, KernelPass pass)
    {
        ProbeVerdict verdict = KernelProbe.Run(Config(s_pointwise, pass), path);

        verdict.Outcome.ShouldBe(ProbeOutcome.Passed);
        verdict.Error.ShouldBeLessThan(1e-5);
        verdict.Milliseconds.ShouldBeGreaterThan(0);
    }

    [Theory]
    [InlineData(KernelPass.Forward)]
    [InlineData(KernelPass.Backward)]
    public void A_kernel_off_by_a_tenth_is_found_wrong(KernelPass pass)
    {
        ConvolutionConfig config = Config(s_threeByThree, pass);

        ProbeVerdict verdict = KernelProbe.Run(config, ConvolutionPath.Unfold, [new InjectedFault(ConvolutionPath.Unfold, "k3x3", FaultKind.Wrong)]);

        verdict.Outcome.ShouldBe(ProbeOutcome.Wrong);
        verdict.Error.ShouldBeInRange(0.05, 0.2);
    }

    [Fact]
    public void A_fault_for_other_configurations_or_paths_changes_nothing()
    {
        ProbeVerdict verdict = KernelProbe.Run(Config(s_threeByThree), ConvolutionPath.Unfold,
            [new InjectedFault(ConvolutionPath.Unfold, "k1x1", FaultKind.Wrong), new InjectedFault(ConvolutionPath.Contiguous, "", FaultKind.Crash)]);

        verdict.Outcome.ShouldBe(ProbeOutcome.Passed);
    }

    [Fact]
    public void In_bf16_a_right_path_passes_within_the_precision_of_the_type()
    {
        ProbeVerdict verdict = KernelProbe.Run(Config(s_pointwise, type: ScalarType.BFloat16), ConvolutionPath.Pointwise);

        verdict.Outcome.ShouldBe(ProbeOutcome.Passed);
        verdict.Error.ShouldBeLessThan(KernelProbe.ToleranceFor(ScalarType.BFloat16));
    }

    [Fact]
    public void A_path_that_cannot_compute_the_geometry_is_unsupported_not_wrong()
    {
        // The pointwise product is only for 1x1 convolutions.
        ProbeVerdict verdict = KernelProbe.Run(Config(s_threeByThree), ConvolutionPath.Pointwise);

        verdict.Outcome.ShouldBe(ProbeOutcome.Unsupported);
        verdict.Message.ShouldNotBeNullOrWhiteSpace();
    }
}
