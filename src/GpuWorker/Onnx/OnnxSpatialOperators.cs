using Cluster.GpuWorker.Kernels;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Cluster.GpuWorker.Onnx;

/// <summary>
/// Convolution, pooling, padding and batch normalisation. ONNX pads are per side ([x1_begin, x2_begin, ...,
/// x1_end, x2_end]) while torch's convolution and pooling pad both sides equally, so asymmetric pads (CNTK and
/// TensorFlow exports have them: ResNet18.onnx's conv1 uses [3,3,2,2]) need care to stay exact.
/// </summary>
internal static partial class OnnxOperators
{
    private static string? CheckConv(OnnxNode node, int opset) =>
        CheckSpatialRank(node) ?? CheckAutoPad(node);

    private static string? CheckMaxPool(OnnxNode node, int opset)
    {
        if (node.Outputs.Length > 1 && node.Outputs[1].Length > 0)
        {
            return "its Indices output is not supported";
        }
        if (!node.HasAttribute("kernel_shape"))
        {
            return "kernel_shape is missing";
        }
        return CheckSpatialRank(node) ?? CheckAutoPad(node);
    }

    private static string? CheckAveragePool(OnnxNode node, int opset)
    {
        if (node.GetInts("dilations") is { } dilations && dilations.Any(d => d != 1))
        {
            return "dilated average pooling is not supported";
        }
        if (!node.HasAttribute("kernel_shape"))
        {
            return "kernel_shape is missing";
        }
        return CheckSpatialRank(node) ?? CheckAutoPad(node);
    }

    private static string? CheckSpatialRank(OnnxNode node) =>
        node.GetInts("kernel_shape") is { Length: not (1 or 2) } kernel
            ? $"it works on {kernel.Length} spatial dimensions; this importer handles 1 and 2"
            : null;

    private static string? CheckAutoPad(OnnxNode node) =>
        node.GetString("auto_pad", "NOTSET") is "NOTSET" or "SAME_UPPER" or "SAME_LOWER" or "VALID"
            ? null
            : $"auto_pad '{node.GetString("auto_pad", "")}' is not one ONNX defines";

    private static string? CheckBatchNormalization(OnnxNode node, int opset)
    {
        if (opset < 9 && node.GetInt("spatial", 1) == 0)
        {
            return "per-activation statistics (spatial=0) are not supported";
        }
        return node.Outputs.Skip(1).Any(o => o.Length > 0)
            ? "its training outputs (running statistics as graph values) are not supported; the module keeps them as buffers"
            : null;
    }

    private static string? CheckPad(OnnxNode node, int opset) =>
        node.GetString("mode", "constant") is "constant" or "reflect" or "edge" or "wrap"
            ? null
            : $"pad mode '{node.GetString("mode", "")}' is not supported";

    /// <summary>
    /// Always the running statistics (inference mode), also while the graph trains: an imported graph is a pretrained
    /// network being fine-tuned, and re-estimating ImageNet statistics from small fine-tuning batches (16-32 images
    /// of a few classes) shifts every later layer's input away from what it was trained on. This is Keras'
    /// fine-tuning rule (a frozen BatchNormalization runs in inference mode). The scale and shift stay Parameters, so
    /// they train where the graph's suffix trains. See docs/onnx.md.
    /// </summary>
    private static Tensor[] BatchNormalization(OnnxOperatorContext c)
    {
        double epsilon = c.Node.GetFloat("epsilon", 1e-5f);
        return
        [
            F.batch_norm(c.Input(0), c.Input(3), c.Input(4), c.Input(1), c.Input(2), training: false, eps: epsilon),
        ];
    }

    private static Tensor[] Conv(OnnxOperatorContext c)
    {
        Tensor x = c.Input(0);
        Tensor weight = c.Input(1);
        Tensor? bias = c.Optional(2);
        int spatial = (int)weight.dim() - 2;
        if (spatial is not (1 or 2) || x.dim() != spatial + 2)
        {
            throw c.Fail($"input of shape [{string.Join(",", x.shape)}] and weight [{string.Join(",", weight.shape)}] are not a 1-D or 2-D convolution");
        }
        long[] kernel = weight.shape[2..];
        long[] strides = c.Node.GetInts("strides") ?? Ones(spatial);
        long[] dilations = c.Node.GetInts("dilations") ?? Ones(spatial);
        long group = c.Node.GetInt("group", 1);
        (long[] begin, long[] end) = ResolvePads(c, x.shape[2..], kernel, strides, dilations);

        if (spatial == 1)
        {
            // A 1-D convolution is a 2-D one over a height of 1.
            using Tensor x2 = x.unsqueeze(2);
            using Tensor w2 = weight.unsqueeze(2);
            using Tensor y2 = Conv2d(c.Router, x2, w2, bias, [1, strides[0]], [1, dilations[0]], [0, begin[0]], [0, end[0]], group);
            return [y2.squeeze(2)];
        }
        return [Conv2d(c.Router, x, weight, bias, strides, dilations, begin, end, group)];
    }

    private static Tensor Conv2d(ConvolutionRouter router, Tensor x, Tensor weight, Tensor? bias, long[] strides, long[] dilations,
        long[] begin, long[] end, long group)
    {
        long[] kernel = weight.shape[2..];
        long[] outputSize = [.. Enumerable.Range(0, 2).Select(i =>
            (x.shape[i + 2] + begin[i] + end[i] - Effective(kernel[i], dilations[i])) / strides[i] + 1)];
        if (begin.Zip(end).All(p => p.First >= p.Second))
        {
            // Padding every side by `begin` places each window exactly where ONNX places it; the surplus end padding
            // can only add windows past the ONNX output, which are cut off. No copy of the input is made, which is
            // what keeps ResNet18.onnx's conv1 ([3,3,2,2]) and its stride-2 3x3 convs ([1,1,0,0]) cheap.
            Tensor y = router.Conv2d(x, weight, bias, Geometry(weight, bias, strides, begin, dilations, group));
            return NarrowSpatial(y, outputSize);
        }
        using Tensor padded = F.pad(x, TorchPads(begin, end));
        return router.Conv2d(padded, weight, bias, Geometry(weight, bias, strides, [0, 0], dilations, group));
    }

    private static ConvolutionGeometry Geometry(Tensor weight, Tensor? bias, long[] strides, long[] pads, long[] dilations, long group) =>
        new(weight.shape[1] * group, weight.shape[0], weight.shape[2], weight.shape[3], strides[0], strides[1], pads[0], pads[1],
            dilations[0], dilations[1], group, bias is not null);

    private static Tensor[] MaxPool(OnnxOperatorContext c) => Pool(c, isMax: true);

    private static Tensor[] AveragePool(OnnxOperatorContext c) => Pool(c, isMax: false);

    private static Tensor[] Pool(OnnxOperatorContext c, bool isMax)
    {
        Tensor x = c.Input(0);
        long[] kernel = c.Node.GetInts("kernel_shape")!;
        int spatial = kernel.Length;
        if (x.dim() != spatial + 2)
        {
            throw c.Fail($"input of shape [{string.Join(",", x.shape)}] does not match a {spatial}-D kernel");
        }
        long[] strides = c.Node.GetInts("strides") ?? Ones(spatial);
        long[] dilations = c.Node.GetInts("dilations") ?? Ones(spatial);
        bool ceilMode = c.Node.GetInt("ceil_mode", 0) != 0;
        bool countIncludePad = c.Node.GetInt("count_include_pad", 0) != 0;
        (long[] begin, long[] end) = ResolvePads(c, x.shape[2..], kernel, strides, dilations);
        long[] outputSize = [.. Enumerable.Range(0, spatial).Select(i =>
            PoolOutputSize(x.shape[i + 2], kernel[i], strides[i], dilations[i], begin[i], end[i], ceilMode))];

        if (spatial == 1)
        {
            using Tensor x2 = x.unsqueeze(2);
            using Tensor y2 = Pool2d(x2, isMax, [1, kernel[0]], [1, strides[0]], [1, dilations[0]],
                [0, begin[0]], [0, end[0]], [1, outputSize[0]], countIncludePad);
            return [y2.squeeze(2)];
        }
        return [Pool2d(x, isMax, kernel, strides, dilations, begin, end, outputSize, countIncludePad)];
    }

    /// <summary>
    /// ONNX's pooled length: floor or ceil of (in + pads - effective kernel) / stride, plus one; in ceil mode a last
    /// window that would start in the end padding is dropped (ONNX Runtime and torch agree on that rule).
    /// </summary>
    private static long PoolOutputSize(long input, long kernel, long stride, long dilation, long begin, long end, bool ceilMode)
    {
        long span = input + begin + end - Effective(kernel, dilation);
        long size = (ceilMode ? (span + stride - 1) / stride : span / stride) + 1;
        if (ceilMode && (size - 1) * stride >= input + begin)
        {
            size--;
        }
        return size;
    }

    /// <summary>
    /// Every path pools in torch's ceil mode (which never yields fewer windows than ONNX asks for) and then cuts the
    /// result to ONNX's output size, so window positions and the windows kept are ONNX's in every case.
    /// </summary>
    private static Tensor Pool2d(Tensor x, bool isMax, long[] kernel, long[] strides, long[] dilations,
        long[] begin, long[] end, long[] outputSize, bool countIncludePad)
    {
        bool torchCanPad = Enumerable.Range(0, 2).All(i => begin[i] <= kernel[i] / 2);
        if (isMax)
        {
            if (torchCanPad && begin.Zip(end).All(p => p.First >= p.Second))
            {
                // torch pads max pooling with -inf too; see Conv2d for why padding by `begin` is exact.
                using Tensor y = F.max_pool2d(x, kernel, strides, begin, dilations, ceil_mode: true);
                return NarrowSpatial(y.alias(), outputSize);
            }
            using Tensor padded = F.pad(x, TorchPads(begin, end), PaddingModes.Constant, double.NegativeInfinity);
            using Tensor pooled = F.max_pool2d(padded, kernel, strides, [0, 0], dilations, ceil_mode: true);
            return NarrowSpatial(pooled.alias(), outputSize);
        }

        bool symmetric = begin.Zip(end).All(p => p.First == p.Second);
        bool beginCovers = begin.Zip(end).All(p => p.First >= p.Second);
        if (torchCanPad && (countIncludePad ? symmetric : beginCovers))
        {
            // Same windows and divisors as ONNX: torch counts padding up to in + pad (include) or not at all (exclude).
            using Tensor y = F.avg_pool2d(x, kernel, strides, begin, ceil_mode: true, count_include_pad: countIncludePad);
            return NarrowSpatial(y.alias(), outputSize);
        }
        long[] pads = TorchPads(begin, end);
        using Tensor paddedX = F.pad(x, pads);
        if (countIncludePad)
        {
            // Explicit zeros are counted; windows running past the padded input (ceil mode) are clipped, as in ONNX.
            using Tensor y = F.avg_pool2d(paddedX, kernel, strides, [0, 0], ceil_mode: true, count_include_pad: true);
            return NarrowSpatial(y.alias(), outputSize);
        }
        // Excluded padding on uneven sides: divide window sums by the number of real elements in each window.
        using Tensor ones = torch.ones([1, 1, x.shape[2], x.shape[3]], x.dtype, x.device);
        using Tensor paddedOnes = F.pad(ones, pads);
        using Tensor sums = F.avg_pool2d(paddedX, kernel, strides, [0, 0], ceil_mode: true, count_include_pad: true);
        using Tensor counts = F.avg_pool2d(paddedOnes, kernel, strides, [0, 0], ceil_mode: true, count_include_pad: true);
        using Tensor mean = sums / counts;
        return NarrowSpatial(mean.alias(), outputSize);
    }

    private static Tensor[] GlobalAveragePool(OnnxOperatorContext c)
    {
        Tensor x = c.Input(0);
        return [x.mean([.. Enumerable.Range(2, (int)x.dim() - 2).Select(i => (long)i)], keepdim: true)];
    }

    private static Tensor[] GlobalMaxPool(OnnxOperatorContext c)
    {
        Tensor x = c.Input(0);
        return [x.amax([.. Enumerable.Range(2, (int)x.dim() - 2).Select(i => (long)i)], keepdim: true)];
    }

    private static Tensor[] Pad(OnnxOperatorContext c)
    {
        Tensor x = c.Input(0);
        long rank = x.dim();
        string mode = c.Node.GetString("mode", "constant");
        long[] pads;
        double value;
        if (c.Opset < 11)
        {
            pads = c.Node.GetInts("pads") ?? c.Node.GetInts("paddings") ?? throw c.Fail("the pads attribute is missing");
            value = c.Node.GetFloat("value", 0f);
        }
        else
        {
            long[] given = c.Ints(1);
            value = c.OptionalScalar(2) ?? 0;
            long[]? axes = c.OptionalInts(3);
            if (axes is null)
            {
                pads = given;
            }
            else
            {
                // Opset 18: pads only for the listed axes; every other axis is left alone.
                pads = new long[2 * rank];
                for (int i = 0; i < axes.Length; i++)
                {
                    long axis = Normalize(axes[i], rank);
                    pads[axis] = given[i];
                    pads[axis + rank] = given[i + axes.Length];
                }
            }
        }
        if (pads.Length != 2 * rank)
        {
            throw c.Fail($"{pads.Length} pads for a tensor of rank {rank}");
        }
        // torch lists (begin, end) pairs from the last dimension backwards, and only as far as needed.
        int first = Enumerable.Range(0, (int)rank).FirstOrDefault(i => pads[i] != 0 || pads[i + rank] != 0, (int)rank);
        if (first == rank)
        {
            return [x.alias()];
        }
        var torchPads = new List<long>();
        for (long axis = rank - 1; axis >= first; axis--)
        {
            torchPads.Add(pads[axis]);
            torchPads.Add(pads[axis + rank]);
        }
        if (mode == "constant")
        {
            return [F.pad(x, [.. torchPads], PaddingModes.Constant, value)];
        }
        // torch pads reflect/replicate/circular only over the trailing 1-3 dimensions of a batched (N, C, ...) tensor.
        if (first < 2 || rank - first > 3)
        {
            throw c.Fail($"'{mode}' padding of dimension {first} of a rank-{rank} tensor is not supported (only spatial dimensions of N,C,... tensors)");
        }
        PaddingModes torchMode = mode switch
        {
            "reflect" => PaddingModes.Reflect,
            "edge" => PaddingModes.Replicate,
            _ => PaddingModes.Circular,
        };
        return [F.pad(x, [.. torchPads], torchMode)];
    }

    /// <summary>ONNX pads for each spatial dimension (begin, end), from explicit pads or auto_pad.</summary>
    private static (long[] Begin, long[] End) ResolvePads(OnnxOperatorContext c, long[] input, long[] kernel, long[] strides, long[] dilations)
    {
        int n = input.Length;
        string autoPad = c.Node.GetString("auto_pad", "NOTSET");
        var begin = new long[n];
        var end = new long[n];
        switch (autoPad)
        {
            case "VALID":
                break;
            case "SAME_UPPER":
            case "SAME_LOWER":
                for (int i = 0; i < n; i++)
                {
                    long output = (input[i] + strides[i] - 1) / strides[i];
                    long total = Math.Max(0, (output - 1) * strides[i] + Effective(kernel[i], dilations[i]) - input[i]);
                    // An odd total puts the extra cell at the end (SAME_UPPER) or at the beginning (SAME_LOWER).
                    long small = total / 2;
                    begin[i] = autoPad == "SAME_UPPER" ? small : total - small;
                    end[i] = total - begin[i];
                }
                break;
            default:
                long[]? pads = c.Node.GetInts("pads");
                if (pads is not null)
                {
                    if (pads.Length != 2 * n)
                    {
                        throw c.Fail($"{pads.Length} pads for {n} spatial dimensions");
                    }
                    Array.Copy(pads, 0, begin, 0, n);
                    Array.Copy(pads, n, end, 0, n);
                }
                break;
        }
        return (begin, end);
    }

    /// <summary>2-D ONNX (begin, end) pads in torch's order: width (left, right), then height (top, bottom).</summary>
    private static long[] TorchPads(long[] begin, long[] end) => [begin[1], end[1], begin[0], end[0]];

    private static Tensor NarrowSpatial(Tensor y, long[] outputSize)
    {
        Tensor result = y;
        for (int i = 0; i < outputSize.Length; i++)
        {
            long dim = i + 2;
            if (result.shape[dim] > outputSize[i])
            {
                Tensor narrowed = result.narrow(dim, 0, outputSize[i]);
                result.Dispose();
                result = narrowed;
            }
        }
        return result;
    }

    private static long Effective(long kernel, long dilation) => (kernel - 1) * dilation + 1;

    private static long[] Ones(int n) => [.. Enumerable.Repeat(1L, n)];
}
