using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Cluster.GpuWorker.Onnx;

/// <summary>Runs one node: returns one tensor per node output (new tensors; never one of its inputs).</summary>
internal delegate Tensor[] OnnxKernel(OnnxOperatorContext context);

/// <summary>An operator this importer implements.</summary>
/// <param name="Run">The kernel.</param>
/// <param name="WeightInputs">
/// Input positions that hold learned weights: a floating-point constant wired there becomes a trainable Parameter.
/// Constants anywhere else (BatchNorm running statistics, shapes, clip bounds, elementwise constants) become buffers.
/// </param>
/// <param name="Check">Import-time check of attributes this importer does not handle; returns why, or null.</param>
internal sealed record OnnxOperator(OnnxKernel Run, int[] WeightInputs, Func<OnnxNode, int, string?>? Check = null);

/// <summary>
/// The ONNX operators this importer supports, each written against the semantics in onnx/onnx docs/Operators.md
/// for every opset version that changed them (attributes that became inputs, changed defaults).
/// </summary>
internal static partial class OnnxOperators
{
    private static readonly int[] s_none = [];

    public static IReadOnlyDictionary<string, OnnxOperator> All { get; } = new Dictionary<string, OnnxOperator>(StringComparer.Ordinal)
    {
        ["Conv"] = new(Conv, [1, 2], CheckConv),
        ["BatchNormalization"] = new(BatchNormalization, [1, 2], CheckBatchNormalization),
        ["MaxPool"] = new(MaxPool, s_none, CheckMaxPool),
        ["AveragePool"] = new(AveragePool, s_none, CheckAveragePool),
        ["GlobalAveragePool"] = new(GlobalAveragePool, s_none),
        ["GlobalMaxPool"] = new(GlobalMaxPool, s_none),
        ["Pad"] = new(Pad, s_none, CheckPad),
        ["Gemm"] = new(Gemm, [0, 1, 2]),
        ["MatMul"] = new(c => [torch.matmul(c.Input(0), c.Input(1))], [0, 1]),
        ["Relu"] = new(c => [F.relu(c.Input(0))], s_none),
        ["LeakyRelu"] = new(c => [F.leaky_relu(c.Input(0), c.Node.GetFloat("alpha", 0.01f))], s_none),
        ["PRelu"] = new(PRelu, [1]),
        ["Sigmoid"] = new(c => [torch.sigmoid(c.Input(0))], s_none),
        ["Tanh"] = new(c => [torch.tanh(c.Input(0))], s_none),
        ["HardSigmoid"] = new(HardSigmoid, s_none),
        ["HardSwish"] = new(c => [F.hardswish(c.Input(0))], s_none),
        ["Softmax"] = new(c => [SoftmaxFamily(c, log: false)], s_none),
        ["LogSoftmax"] = new(c => [SoftmaxFamily(c, log: true)], s_none),
        ["Clip"] = new(Clip, s_none),
        ["Dropout"] = new(Dropout, s_none, CheckDropout),
        ["Identity"] = new(c => [c.Input(0).alias()], s_none),
        ["Add"] = new(c => [Binary(c, (a, b) => a + b)], s_none),
        ["Sub"] = new(c => [Binary(c, (a, b) => a - b)], s_none),
        ["Mul"] = new(c => [Binary(c, (a, b) => a * b)], s_none),
        ["Div"] = new(c => [Binary(c, Divide)], s_none),
        ["Sum"] = new(Sum, s_none),
        ["Concat"] = new(Concat, s_none),
        ["Split"] = new(Split, s_none),
        ["Flatten"] = new(Flatten, s_none),
        ["Reshape"] = new(Reshape, s_none),
        ["Transpose"] = new(Transpose, s_none),
        ["Squeeze"] = new(Squeeze, s_none),
        ["Unsqueeze"] = new(Unsqueeze, s_none),
        ["Shape"] = new(Shape, s_none),
        ["Gather"] = new(Gather, s_none),
        ["Slice"] = new(Slice, s_none),
        ["Cast"] = new(Cast, s_none, CheckCast),
        ["ReduceMean"] = new(c => [Reduce(c, mean: true, axesBecameInputAt: 18)], s_none),
        ["ReduceSum"] = new(c => [Reduce(c, mean: false, axesBecameInputAt: 13)], s_none),
        // Constant nodes are folded into buffers (or parameters) when the graph is imported and never run.
        ["Constant"] = new(c => throw c.Fail("constant nodes are folded at import"), s_none),
    };

    public static string SupportedList => string.Join(", ", All.Keys.Order(StringComparer.Ordinal));

    private static Tensor Binary(OnnxOperatorContext c, Func<Tensor, Tensor, Tensor> op)
    {
        Tensor a = c.Input(0);
        Tensor b = c.Input(1);
        // Before opset 7, broadcasting was opt-in and could align B with A at a given axis instead of at the end.
        if (c.Opset < 7 && c.Node.GetInt("broadcast", 0) == 1 && c.Node.HasAttribute("axis"))
        {
            long axis = Normalize(c.Node.GetInt("axis", 0), a.dim());
            long trailing = a.dim() - axis - b.dim();
            if (trailing > 0)
            {
                using Tensor aligned = b.reshape([.. b.shape, .. Enumerable.Repeat(1L, (int)trailing)]);
                return op(a, aligned);
            }
        }
        return op(a, b);
    }

    private static Tensor Divide(Tensor a, Tensor b) =>
        torch.is_floating_point(a) || torch.is_floating_point(b)
            ? a / b
            : a.div(b, RoundingMode.trunc); // ONNX integer division truncates; torch's plain `/` would give floats.

    private static Tensor[] Sum(OnnxOperatorContext c)
    {
        Tensor total = c.Input(0).alias();
        for (int i = 1; i < c.Inputs.Length; i++)
        {
            Tensor next = total + c.Input(i);
            total.Dispose();
            total = next;
        }
        return [total];
    }

    private static Tensor[] PRelu(OnnxOperatorContext c)
    {
        Tensor x = c.Input(0);
        using Tensor negative = x.lt(0);
        using Tensor scaled = x * c.Input(1);
        return [torch.where(negative, scaled, x)];
    }

    private static Tensor[] HardSigmoid(OnnxOperatorContext c)
    {
        // ONNX defaults (alpha 0.2) differ from torch's hardsigmoid (1/6), so compute it from the definition.
        float alpha = c.Node.GetFloat("alpha", 0.2f);
        float beta = c.Node.GetFloat("beta", 0.5f);
        using Tensor linear = c.Input(0) * alpha + beta;
        return [linear.clamp(0, 1)];
    }

    private static Tensor SoftmaxFamily(OnnxOperatorContext c, bool log)
    {
        Tensor x = c.Input(0);
        if (c.Opset >= 13)
        {
            long axis = Normalize(c.Node.GetInt("axis", -1), x.dim());
            return log ? F.log_softmax(x, axis) : F.softmax(x, axis);
        }
        // Before opset 13 the input was coerced to 2-D at `axis` (default 1) and normalised over everything after it.
        long coerceAt = Normalize(c.Node.GetInt("axis", 1), x.dim());
        long outer = x.shape.Take((int)coerceAt).Aggregate(1L, (p, d) => p * d);
        using Tensor flat = x.reshape(outer, -1);
        using Tensor normalised = log ? F.log_softmax(flat, 1) : F.softmax(flat, 1);
        return normalised.reshape(x.shape);
    }

    private static Tensor[] Clip(OnnxOperatorContext c)
    {
        Tensor x = c.Input(0);
        double? min;
        double? max;
        if (c.Opset < 11)
        {
            min = c.Node.HasAttribute("min") ? c.Node.GetFloat("min", float.MinValue) : null;
            max = c.Node.HasAttribute("max") ? c.Node.GetFloat("max", float.MaxValue) : null;
        }
        else
        {
            min = c.OptionalScalar(1);
            max = c.OptionalScalar(2);
        }
        return (min, max) switch
        {
            (null, null) => [x.alias()],
            (double lo, null) => [x.clamp_min(lo)],
            (null, double hi) => [x.clamp_max(hi)],
            (double lo, double hi) => [x.clamp(lo, hi)],
        };
    }

    private static string? CheckDropout(OnnxNode node, int opset) =>
        node.Outputs.Length > 1 && node.Outputs[1].Length > 0 ? "its mask output is not supported" : null;

    private static Tensor[] Dropout(OnnxOperatorContext c)
    {
        Tensor x = c.Input(0);
        double ratio = c.Opset < 12 ? c.Node.GetFloat("ratio", 0.5f) : c.OptionalScalar(1) ?? 0.5;
        // Exported graphs carry dropout for inference, where it is the identity; when the imported module is being
        // trained it drops as the original network did.
        return c.Training && ratio > 0 ? [F.dropout(x, ratio, training: true)] : [x.alias()];
    }

    private static Tensor[] Gemm(OnnxOperatorContext c)
    {
        Tensor a = c.Input(0);
        Tensor b = c.Input(1);
        Tensor? bias = c.Optional(2);
        float alpha = c.Node.GetFloat("alpha", 1f);
        float beta = c.Node.GetFloat("beta", 1f);
        bool transA = c.Node.GetInt("transA", 0) != 0;
        bool transB = c.Node.GetInt("transB", 0) != 0;
        if (alpha == 1f && beta == 1f && transB && !transA && (bias is null || bias.dim() <= 1))
        {
            // The classifier-layer case: one fused call, as torch's own Linear does it.
            return [F.linear(a, b, bias)];
        }
        using Tensor left = transA ? a.t() : a.alias();
        using Tensor right = transB ? b.t() : b.alias();
        Tensor product = torch.matmul(left, right);
        if (alpha != 1f)
        {
            using Tensor unscaled = product;
            product = unscaled * alpha;
        }
        if (bias is not null && beta != 0f)
        {
            using Tensor withoutBias = product;
            using Tensor scaledBias = beta == 1f ? bias.alias() : bias * beta;
            product = withoutBias + scaledBias;
        }
        return [product];
    }

    private static Tensor[] Concat(OnnxOperatorContext c)
    {
        Tensor[] parts = [.. c.Inputs.Where(t => t is not null).Select(t => t!)];
        long axis = Normalize(c.Node.GetInt("axis", 0), parts[0].dim());
        return [torch.cat(parts, axis)];
    }

    private static Tensor[] Split(OnnxOperatorContext c)
    {
        Tensor x = c.Input(0);
        long axis = Normalize(c.Node.GetInt("axis", 0), x.dim());
        long length = x.shape[axis];
        int outputs = c.Node.Outputs.Length;
        long[]? sizes = c.Opset < 13 ? c.Node.GetInts("split") : c.OptionalInts(1);
        if (sizes is null || sizes.Length == 0)
        {
            // Equal parts; from opset 18 the last may be smaller (num_outputs with a length that does not divide).
            long chunk = (length + outputs - 1) / outputs;
            sizes = [.. Enumerable.Range(0, outputs).Select(i => Math.Max(0, Math.Min(chunk, length - i * chunk)))];
        }
        if (sizes.Sum() != length || sizes.Length != outputs)
        {
            throw c.Fail($"split sizes [{string.Join(",", sizes)}] do not cut an axis of {length} into {outputs} outputs");
        }
        // Views with handles of their own: freeing the input's handle later leaves them intact.
        return x.split(sizes, axis);
    }

    private static Tensor[] Flatten(OnnxOperatorContext c)
    {
        Tensor x = c.Input(0);
        long axis = c.Node.GetInt("axis", 1);
        axis = axis < 0 ? axis + x.dim() : axis;
        long outer = x.shape.Take((int)axis).Aggregate(1L, (p, d) => p * d);
        long inner = x.shape.Skip((int)axis).Aggregate(1L, (p, d) => p * d);
        return [x.reshape(outer, inner)];
    }

    private static Tensor[] Reshape(OnnxOperatorContext c)
    {
        Tensor x = c.Input(0);
        long[] requested = c.Opset < 5
            ? c.Node.GetInts("shape") ?? throw c.Fail("the shape attribute is missing")
            : c.Ints(1);
        bool allowZero = c.Node.GetInt("allowzero", 0) != 0;
        var shape = new long[requested.Length];
        for (int i = 0; i < requested.Length; i++)
        {
            // 0 copies the input's dimension at the same position (unless allowzero asks for a literal 0); -1 is inferred.
            shape[i] = requested[i] == 0 && !allowZero ? x.shape[i] : requested[i];
        }
        return [x.reshape(shape)];
    }

    private static Tensor[] Transpose(OnnxOperatorContext c)
    {
        Tensor x = c.Input(0);
        long[] permutation = c.Node.GetInts("perm") ?? [.. Enumerable.Range(0, (int)x.dim()).Reverse().Select(i => (long)i)];
        return [x.permute(permutation)];
    }

    private static Tensor[] Squeeze(OnnxOperatorContext c)
    {
        Tensor x = c.Input(0);
        long[]? axes = c.Opset < 13 ? c.Node.GetInts("axes") : c.OptionalInts(1);
        HashSet<long> drop = axes is null || axes.Length == 0
            ? [.. Enumerable.Range(0, (int)x.dim()).Where(i => x.shape[i] == 1).Select(i => (long)i)]
            : [.. axes.Select(a => Normalize(a, x.dim()))];
        foreach (long axis in drop)
        {
            if (x.shape[axis] != 1)
            {
                throw c.Fail($"axis {axis} has size {x.shape[axis]}, so it cannot be squeezed");
            }
        }
        return [x.reshape([.. x.shape.Where((_, i) => !drop.Contains(i))])];
    }

    private static Tensor[] Unsqueeze(OnnxOperatorContext c)
    {
        Tensor x = c.Input(0);
        long[] axes = (c.Opset < 13 ? c.Node.GetInts("axes") : c.OptionalInts(1))
            ?? throw c.Fail("no axes given");
        long rank = x.dim() + axes.Length;
        // Axes refer to the output's dimensions.
        HashSet<long> inserted = [.. axes.Select(a => Normalize(a, rank))];
        var shape = new List<long>();
        int next = 0;
        for (long i = 0; i < rank; i++)
        {
            shape.Add(inserted.Contains(i) ? 1 : x.shape[next++]);
        }
        return [x.reshape([.. shape])];
    }

    private static Tensor[] Shape(OnnxOperatorContext c)
    {
        Tensor x = c.Input(0);
        long rank = x.dim();
        long start = Math.Clamp(NormalizeLoose(c.Node.GetInt("start", 0), rank), 0, rank);
        long end = Math.Clamp(NormalizeLoose(c.Node.GetInt("end", rank), rank), 0, rank);
        long[] dims = [.. x.shape.Skip((int)start).Take((int)Math.Max(0, end - start))];
        return [torch.tensor(dims, device: x.device)];
    }

    private static Tensor[] Gather(OnnxOperatorContext c)
    {
        Tensor data = c.Input(0);
        Tensor indices = c.Input(1);
        long axis = Normalize(c.Node.GetInt("axis", 0), data.dim());
        using Tensor index = indices.to(ScalarType.Int64, data.device);
        using Tensor wrapped = torch.where(index.lt(0), index + data.shape[axis], index);
        using Tensor flat = wrapped.flatten();
        using Tensor picked = data.index_select(axis, flat);
        long[] shape = [.. data.shape.Take((int)axis), .. indices.shape, .. data.shape.Skip((int)axis + 1)];
        return [picked.reshape(shape)];
    }

    private static Tensor[] Slice(OnnxOperatorContext c)
    {
        Tensor x = c.Input(0);
        long[] starts;
        long[] ends;
        long[]? axes;
        long[]? steps = null;
        if (c.Opset < 10)
        {
            starts = c.Node.GetInts("starts") ?? throw c.Fail("the starts attribute is missing");
            ends = c.Node.GetInts("ends") ?? throw c.Fail("the ends attribute is missing");
            axes = c.Node.GetInts("axes");
        }
        else
        {
            starts = c.Ints(1);
            ends = c.Ints(2);
            axes = c.OptionalInts(3);
            steps = c.OptionalInts(4);
        }
        axes ??= [.. Enumerable.Range(0, starts.Length).Select(i => (long)i)];
        steps ??= [.. Enumerable.Repeat(1L, starts.Length)];
        Tensor result = x.alias();
        for (int i = 0; i < axes.Length; i++)
        {
            long axis = Normalize(axes[i], x.dim());
            long size = x.shape[axis];
            long step = steps[i];
            if (step == 0)
            {
                throw c.Fail("a slice step of 0 is not allowed");
            }
            long start = starts[i] < 0 ? starts[i] + size : starts[i];
            long end = ends[i] < 0 ? ends[i] + size : ends[i];
            Tensor next;
            if (step > 0)
            {
                start = Math.Clamp(start, 0, size);
                end = Math.Clamp(end, start, size);
                next = result.slice(axis, start, end, step);
            }
            else
            {
                // torch views cannot step backwards; pick the indices instead.
                start = Math.Clamp(start, 0, size - 1);
                end = Math.Clamp(end, -1, size - 1);
                using Tensor picks = torch.arange(start, end, step, ScalarType.Int64, x.device);
                next = result.index_select(axis, picks);
            }
            result.Dispose();
            result = next;
        }
        return [result];
    }

    private static string? CheckCast(OnnxNode node, int opset) =>
        OnnxTensors.ToScalarType((int)node.GetInt("to", 0)) is null
            ? $"it casts to ONNX data type {node.GetInt("to", 0)}, which this importer does not support"
            : null;

    private static Tensor[] Cast(OnnxOperatorContext c)
    {
        ScalarType type = OnnxTensors.ToScalarType((int)c.Node.GetInt("to", 0))!.Value;
        return [c.Input(0).to(type, copy: true)];
    }

    private static Tensor Reduce(OnnxOperatorContext c, bool mean, int axesBecameInputAt)
    {
        Tensor x = c.Input(0);
        long[]? axes = c.Opset < axesBecameInputAt ? c.Node.GetInts("axes") : c.OptionalInts(1);
        bool keepDims = c.Node.GetInt("keepdims", 1) != 0;
        if (axes is null || axes.Length == 0)
        {
            if (c.Node.GetInt("noop_with_empty_axes", 0) != 0)
            {
                return x.alias();
            }
            axes = [.. Enumerable.Range(0, (int)x.dim()).Select(i => (long)i)];
        }
        long[] dims = [.. axes.Select(a => Normalize(a, x.dim()))];
        return mean ? x.mean(dims, keepDims) : x.sum(dims, keepDims);
    }

    /// <summary>A possibly negative axis as a position in [0, rank).</summary>
    internal static long Normalize(long axis, long rank)
    {
        long normalized = axis < 0 ? axis + rank : axis;
        if (normalized < 0 || normalized >= rank)
        {
            throw new ArgumentOutOfRangeException(nameof(axis), $"axis {axis} is outside a tensor of rank {rank}");
        }
        return normalized;
    }

    private static long NormalizeLoose(long axis, long rank) => axis < 0 ? axis + rank : axis;
}
