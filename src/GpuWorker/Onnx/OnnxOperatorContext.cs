using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Onnx;

/// <summary>What one operator kernel sees when it runs: its node, its input tensors, the opset and the module's mode.</summary>
internal sealed class OnnxOperatorContext
{
    public OnnxOperatorContext(OnnxNode node, Tensor?[] inputs, int opset, bool training, string file, Kernels.ConvolutionRouter router)
    {
        Router = router;
        Node = node;
        Inputs = inputs;
        Opset = opset;
        Training = training;
        File = file;
    }

    public OnnxNode Node { get; }

    /// <summary>One entry per node input; null where an optional input is omitted.</summary>
    public Tensor?[] Inputs { get; }

    /// <summary>The ai.onnx opset the file was written against; several operators changed meaning between versions.</summary>
    public int Opset { get; }

    public bool Training { get; }

    /// <summary>The graph's convolution router: Conv nodes compute through it, never through conv2d directly.</summary>
    public Kernels.ConvolutionRouter Router { get; }

    public string File { get; }

    public Tensor Input(int index) =>
        Optional(index) ?? throw Fail($"input {index} is required but missing");

    public Tensor? Optional(int index) => index < Inputs.Length ? Inputs[index] : null;

    /// <summary>Integer values of a (small) input such as shape, axes or pads, read back to the host.</summary>
    public long[]? OptionalInts(int index)
    {
        Tensor? tensor = Optional(index);
        if (tensor is null)
        {
            return null;
        }
        using Tensor host = tensor.to(ScalarType.Int64, CPU, copy: true);
        return host.data<long>().ToArray();
    }

    public long[] Ints(int index) => OptionalInts(index) ?? throw Fail($"input {index} is required but missing");

    /// <summary>A scalar input (Clip bounds, Pad value, Dropout ratio) as a double, or null when omitted.</summary>
    public double? OptionalScalar(int index)
    {
        Tensor? tensor = Optional(index);
        if (tensor is null)
        {
            return null;
        }
        if (tensor.numel() != 1)
        {
            throw Fail($"input {index} must be a single value but has shape [{string.Join(",", tensor.shape)}]");
        }
        using Tensor host = tensor.to(ScalarType.Float64, CPU, copy: true);
        return host.data<double>()[0];
    }

    /// <summary>A run-time failure that names the file, the node and its operator.</summary>
    public InvalidOperationException Fail(string message) =>
        new($"{File}: node '{Node.DisplayName}' ({Node.OpType}): {message}.");
}
