using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Kernels;
using Shouldly;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Kernels;

/// <summary>
/// The fallback paths compute what a convolution computes: forward and both gradients, over the geometries the model
/// families use, in every layout combination. The arithmetic of the paths is checked in float64, where libtorch runs
/// its plain reference loops: whether a CPU's float32 and bf16 kernels are right is the kernel check's question, not
/// this test's (on the Zen 5 machine libtorch's own NCHW float32 backward of a 1×7 convolution is wrong).
/// </summary>
public sealed class ConvolutionKernelsTests
{
    private static readonly Dictionary<string, ConvolutionGeometry> s_geometries = new()
    {
        ["1x1"] = new(16, 32, 1, 1, 1, 1, 0, 0, 1, 1, 1, HasBias: true),
        ["1x1 stride 2"] = new(16, 24, 1, 1, 2, 2, 0, 0, 1, 1, 1, HasBias: false),
        ["3x3 pad 1"] = new(8, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, HasBias: true),
        ["3x3 stride 2"] = new(8, 16, 3, 3, 2, 2, 1, 1, 1, 1, 1, HasBias: false),
        ["7x7 stride 2 (stem)"] = new(3, 8, 7, 7, 2, 2, 3, 3, 1, 1, 1, HasBias: false),
        ["depthwise 3x3"] = new(16, 16, 3, 3, 1, 1, 1, 1, 1, 1, 16, HasBias: true),
        ["grouped 3x3"] = new(16, 32, 3, 3, 1, 1, 1, 1, 1, 1, 4, HasBias: false),
        ["1x7 (Inception)"] = new(8, 12, 1, 7, 1, 1, 0, 3, 1, 1, 1, HasBias: false),
        ["3x3 dilated"] = new(8, 8, 3, 3, 1, 1, 2, 2, 2, 2, 1, HasBias: true),
    };

    public ConvolutionKernelsTests() => TorchRuntime.Initialize();

    public static TheoryData<string, ConvolutionPath, TensorLayout, TensorLayout> Cases()
    {
        var data = new TheoryData<string, ConvolutionPath, TensorLayout, TensorLayout>();
        foreach ((string name, ConvolutionGeometry geometry) in s_geometries)
        {
            foreach (ConvolutionPath path in (ConvolutionPath[])[ConvolutionPath.Pointwise, ConvolutionPath.Contiguous, ConvolutionPath.Unfold])
            {
                if (path == ConvolutionPath.Pointwise && !geometry.IsPointwise)
                {
                    continue;
                }
                data.Add(name, path, TensorLayout.ChannelsLast, TensorLayout.ChannelsLast);
                data.Add(name, path, TensorLayout.Contiguous, TensorLayout.Contiguous);
                data.Add(name, path, TensorLayout.ChannelsLast, TensorLayout.Contiguous);
            }
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void A_fallback_path_gives_the_convolution_and_its_gradients(string geometryName, ConvolutionPath path, TensorLayout inputLayout, TensorLayout weightLayout)
    {
        ConvolutionGeometry g = s_geometries[geometryName];
        using var scope = NewDisposeScope();
        var generator = new Generator(31);
        Tensor x = TensorLayouts.To(randn([3, g.InChannels, 13, 11], dtype: float64, generator: generator), inputLayout).requires_grad_(true);
        Tensor w = TensorLayouts.To(randn([g.OutChannels, g.InChannels / g.Groups, g.KernelHeight, g.KernelWidth], dtype: float64, generator: generator), weightLayout).requires_grad_(true);
        Tensor? b = g.HasBias ? randn([g.OutChannels], dtype: float64, generator: generator).requires_grad_(true) : null;

        Tensor y = ConvolutionKernels.Run(path, x, w, b, g);
        Tensor gradient = randn(y.shape, dtype: float64, generator: generator);
        y.backward([gradient]);

        Tensor xr = x.detach().contiguous().requires_grad_(true);
        Tensor wr = w.detach().contiguous().requires_grad_(true);
        Tensor? br = b?.detach().clone().requires_grad_(true);
        Tensor expected = nn.functional.conv2d(xr, wr, br, [g.StrideHeight, g.StrideWidth], [g.PadHeight, g.PadWidth], [g.DilationHeight, g.DilationWidth], g.Groups);
        expected.backward([gradient]);

        y.shape.ShouldBe(expected.shape);
        TensorLayouts.Of(y).ShouldBe(ConvolutionKernels.OutputLayout(inputLayout, weightLayout), "a fallback keeps the layout libtorch's own convolution gives");
        RelativeError(y, expected).ShouldBeLessThan(1e-12, "output");
        RelativeError(x.grad!, xr.grad!).ShouldBeLessThan(1e-12, "input gradient");
        RelativeError(w.grad!, wr.grad!).ShouldBeLessThan(1e-12, "weight gradient");
        if (b is not null)
        {
            RelativeError(b.grad!, br!.grad!).ShouldBeLessThan(1e-12, "bias gradient");
        }
    }

    [Theory]
    [InlineData("1x1 stride 2", ConvolutionPath.Pointwise)]
    [InlineData("depthwise 3x3", ConvolutionPath.Unfold)]
    [InlineData("1x7 (Inception)", ConvolutionPath.Unfold)]
    public void In_bf16_a_product_path_agrees_with_float64_of_the_rounded_operands(string geometryName, ConvolutionPath path)
    {
        ConvolutionGeometry g = s_geometries[geometryName];
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var generator = new Generator(32);
        Tensor x = TensorLayouts.ToChannelsLast(randn([2, g.InChannels, 9, 9], generator: generator).to(bfloat16));
        Tensor w = TensorLayouts.ToChannelsLast(randn([g.OutChannels, g.InChannels / g.Groups, g.KernelHeight, g.KernelWidth], generator: generator).to(bfloat16));
        Tensor? b = g.HasBias ? randn([g.OutChannels], generator: generator).to(bfloat16) : null;

        Tensor y = ConvolutionKernels.Run(path, x, w, b, g);
        Tensor expected = ConvolutionKernels.Run(ConvolutionPath.Native, x.to(float64).contiguous(), w.to(float64).contiguous(), b?.to(float64), g);

        y.dtype.ShouldBe(ScalarType.BFloat16);
        RelativeError(y, expected).ShouldBeLessThan(KernelProbe.ToleranceFor(ScalarType.BFloat16));
    }

    [Fact]
    public void The_fallback_list_offers_the_pointwise_product_only_for_1x1_convolutions_and_always_ends_with_unfold()
    {
        ConvolutionConfig Config(ConvolutionGeometry g, TensorLayout layout) =>
            new(g, 32, 14, 14, ScalarType.Float32, layout, layout, "cpu", 1, KernelPass.Forward);

        ConvolutionKernels.FallbacksFor(Config(s_geometries["1x1 stride 2"], TensorLayout.ChannelsLast))
            .ShouldBe([ConvolutionPath.Pointwise, ConvolutionPath.Contiguous, ConvolutionPath.Unfold]);
        ConvolutionKernels.FallbacksFor(Config(s_geometries["3x3 pad 1"], TensorLayout.ChannelsLast))
            .ShouldBe([ConvolutionPath.Contiguous, ConvolutionPath.Unfold]);
        // An NCHW convolution has no other layout to fall back to.
        ConvolutionKernels.FallbacksFor(Config(s_geometries["3x3 pad 1"], TensorLayout.Contiguous)).ShouldBe([ConvolutionPath.Unfold]);
    }

    internal static double RelativeError(Tensor actual, Tensor expected)
    {
        using Tensor a = actual.detach().to(float64);
        using Tensor e = expected.detach().to(float64);
        return (a - e).abs().max().item<double>() / Math.Max(e.abs().max().item<double>(), 1e-30);
    }
}
