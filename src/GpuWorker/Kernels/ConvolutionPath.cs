using System.Text.Json.Serialization;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Cluster.GpuWorker.Kernels;

/// <summary>Ways to compute one convolution. All give the same result up to rounding; which are right on a CPU is checked.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<ConvolutionPath>))]
public enum ConvolutionPath
{
    /// <summary>libtorch's conv2d on the tensors as they are (oneDNN on CPU, in the layout the model runs).</summary>
    Native,

    /// <summary>A 1×1 convolution as a matrix product over channels-last pixels (a GEMM, not a convolution kernel).</summary>
    Pointwise,

    /// <summary>libtorch's conv2d on NCHW copies of input and weight, the result put back in the caller's layout.</summary>
    Contiguous,

    /// <summary>im2col (unfold) and a batched matrix product: any geometry, no convolution kernel at all; the slowest.</summary>
    Unfold,
}

/// <summary>
/// The implementations of each <see cref="ConvolutionPath"/>. Every path is differentiable (autograd sees only
/// views, copies, products and additions), and every path returns its result in the layout libtorch's own conv2d
/// would: channels-last when the input or the weight is, so the rest of the model sees the same tensors whichever
/// path a convolution takes.
/// </summary>
public static class ConvolutionKernels
{
    /// <summary>The paths that can compute <paramref name="config"/> in place of the native kernel, most promising first.</summary>
    public static IReadOnlyList<ConvolutionPath> FallbacksFor(ConvolutionConfig config)
    {
        var paths = new List<ConvolutionPath>(3);
        if (config.Geometry.IsPointwise)
        {
            paths.Add(ConvolutionPath.Pointwise);
        }
        if (config.InputLayout == TensorLayout.ChannelsLast || config.WeightLayout == TensorLayout.ChannelsLast)
        {
            paths.Add(ConvolutionPath.Contiguous);
        }
        paths.Add(ConvolutionPath.Unfold);
        return paths;
    }

    public static Tensor Run(ConvolutionPath path, Tensor input, Tensor weight, Tensor? bias, in ConvolutionGeometry geometry) => path switch
    {
        ConvolutionPath.Native => Native(input, weight, bias, geometry),
        ConvolutionPath.Pointwise => Pointwise(input, weight, bias, geometry),
        ConvolutionPath.Contiguous => Contiguous(input, weight, bias, geometry),
        ConvolutionPath.Unfold => Unfold(input, weight, bias, geometry),
        _ => throw new ArgumentOutOfRangeException(nameof(path), path, null),
    };

    /// <summary>The layout libtorch gives a convolution's output on CPU: channels-last if the input or the weight is.</summary>
    public static TensorLayout OutputLayout(TensorLayout input, TensorLayout weight) =>
        input == TensorLayout.ChannelsLast || weight == TensorLayout.ChannelsLast ? TensorLayout.ChannelsLast : TensorLayout.Contiguous;

    private static Tensor Native(Tensor input, Tensor weight, Tensor? bias, in ConvolutionGeometry g) =>
        F.conv2d(input, weight, bias, [g.StrideHeight, g.StrideWidth], [g.PadHeight, g.PadWidth], [g.DilationHeight, g.DilationWidth], g.Groups);

    private static Tensor Pointwise(Tensor input, Tensor weight, Tensor? bias, in ConvolutionGeometry g)
    {
        if (!g.IsPointwise)
        {
            throw new ArgumentException($"the pointwise path computes 1x1 convolutions without padding or groups, not {g}", nameof(g));
        }
        TensorLayout layout = OutputLayout(TensorLayouts.Of(input), TensorLayouts.Of(weight));
        // A stride of s samples every s-th pixel: slicing first is exact (a 1×1 window sees only its own pixel).
        using Tensor sampled = g.StrideHeight > 1 || g.StrideWidth > 1
            ? input[TensorIndex.Colon, TensorIndex.Colon, TensorIndex.Slice(null, null, g.StrideHeight), TensorIndex.Slice(null, null, g.StrideWidth)]
            : input.alias();
        long n = sampled.shape[0], height = sampled.shape[2], width = sampled.shape[3];
        // [N·H·W, Cin]: a view when the input is channels-last and not strided, else one copy.
        using Tensor nhwc = sampled.permute(0, 2, 3, 1);
        using Tensor pixels = nhwc.reshape(-1, g.InChannels);
        using Tensor matrix = weight.reshape(g.OutChannels, g.InChannels);
        using Tensor transposed = matrix.t();
        using Tensor product = bias is null ? pixels.mm(transposed) : torch.addmm(bias, pixels, transposed, 1, 1);
        using Tensor rows = product.view(n, height, width, g.OutChannels);
        Tensor result = rows.permute(0, 3, 1, 2);
        return FinishIn(result, layout);
    }

    private static Tensor Contiguous(Tensor input, Tensor weight, Tensor? bias, in ConvolutionGeometry g)
    {
        TensorLayout layout = OutputLayout(TensorLayouts.Of(input), TensorLayouts.Of(weight));
        using Tensor x = input.contiguous();
        using Tensor w = weight.contiguous();
        Tensor result = F.conv2d(x, w, bias, [g.StrideHeight, g.StrideWidth], [g.PadHeight, g.PadWidth], [g.DilationHeight, g.DilationWidth], g.Groups);
        return FinishIn(result, layout);
    }

    private static Tensor Unfold(Tensor input, Tensor weight, Tensor? bias, in ConvolutionGeometry g)
    {
        TensorLayout layout = OutputLayout(TensorLayouts.Of(input), TensorLayouts.Of(weight));
        long n = input.shape[0];
        (long height, long width) = g.OutputSize(input.shape[2], input.shape[3]);
        long perGroup = g.InChannels / g.Groups * g.KernelHeight * g.KernelWidth;
        // [N, Cin·kh·kw, L] patches, then per group [Cout/g, K] × [K, L].
        using Tensor columns = F.unfold(input, (g.KernelHeight, g.KernelWidth), (g.DilationHeight, g.DilationWidth),
            (g.PadHeight, g.PadWidth), (g.StrideHeight, g.StrideWidth));
        using Tensor grouped = columns.view(n, g.Groups, perGroup, height * width);
        using Tensor packedWeight = weight.contiguous();
        using Tensor groupWeight = packedWeight.view(g.Groups, g.OutChannels / g.Groups, perGroup);
        using Tensor product = groupWeight.matmul(grouped);
        Tensor result = product.reshape(n, g.OutChannels, height, width);
        if (bias is not null)
        {
            using Tensor unbiased = result;
            using Tensor column = bias.view(1, g.OutChannels, 1, 1);
            result = unbiased + column;
        }
        return FinishIn(result, layout);
    }

    /// <summary><paramref name="result"/> in <paramref name="layout"/>, disposing it when a copy is made.</summary>
    private static Tensor FinishIn(Tensor result, TensorLayout layout)
    {
        if (TensorLayouts.Of(result) == layout && (layout == TensorLayout.ChannelsLast || result.is_contiguous()))
        {
            return result;
        }
        using (result)
        {
            return layout == TensorLayout.ChannelsLast ? TensorLayouts.ToChannelsLast(result) : result.contiguous();
        }
    }
}
