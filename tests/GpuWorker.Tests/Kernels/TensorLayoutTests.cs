using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Kernels;
using Shouldly;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Kernels;

public sealed class TensorLayoutTests
{
    public TensorLayoutTests() => TorchRuntime.Initialize();

    [Theory]
    [InlineData(2, 8, 5, 5)]
    [InlineData(2, 8, 1, 1)] // a pooled tensor, as MobileNet v3's squeeze-excitation convolves it
    [InlineData(1, 3, 224, 224)]
    [InlineData(512, 256, 1, 1)] // a 1x1 convolution's weight
    public void A_channels_last_copy_is_channels_last_to_libtorch_and_a_contiguous_tensor_is_not(long n, long c, long h, long w)
    {
        using Tensor nchw = randn(n, c, h, w);
        using Tensor nhwc = TensorLayouts.ToChannelsLast(nchw);

        TensorLayouts.Of(nchw).ShouldBe(TensorLayout.Contiguous);
        TensorLayouts.Of(nhwc).ShouldBe(TensorLayout.ChannelsLast);
        nhwc.allclose(nchw, rtol: 0, atol: 0).ShouldBeTrue();
        // The strides of an NHWC buffer, even where a dimension of 1 would let any stride pass.
        nhwc.stride().ShouldBe([h * w * c, 1, w * c, c]);
    }

    [Fact]
    public void Ambiguous_strides_are_classified_as_libtorch_classifies_them()
    {
        // c10's own examples: an N111 tensor is NCHW; [N,C,1,1] with strides (C,1,1,1) is NCHW, with (C,1,C,C) channels-last.
        TensorLayouts.IsChannelsLast([4, 1, 1, 1], [1, 1, 1, 1]).ShouldBeFalse();
        TensorLayouts.IsChannelsLast([4, 8, 1, 1], [8, 1, 1, 1]).ShouldBeFalse();
        TensorLayouts.IsChannelsLast([4, 8, 1, 1], [8, 1, 8, 8]).ShouldBeTrue();
        TensorLayouts.IsChannelsLast([1, 8, 1, 5], [40, 5, 5, 1]).ShouldBeFalse();
    }

    [Theory]
    [InlineData(TensorLayout.ChannelsLast, TensorLayout.ChannelsLast)]
    [InlineData(TensorLayout.ChannelsLast, TensorLayout.Contiguous)]
    [InlineData(TensorLayout.Contiguous, TensorLayout.ChannelsLast)]
    [InlineData(TensorLayout.Contiguous, TensorLayout.Contiguous)]
    public void The_layout_rule_for_outputs_is_the_one_libtorch_follows(TensorLayout input, TensorLayout weight)
    {
        using var scope = NewDisposeScope();
        Tensor x = TensorLayouts.To(randn(2, 8, 9, 9), input);
        Tensor w = TensorLayouts.To(randn(16, 8, 3, 3), weight);

        Tensor y = nn.functional.conv2d(x, w, padding: [1, 1]);

        TensorLayouts.Of(y).ShouldBe(ConvolutionKernels.OutputLayout(input, weight));
    }
}
