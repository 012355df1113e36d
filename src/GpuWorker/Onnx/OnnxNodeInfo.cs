namespace Cluster.GpuWorker.Onnx;

/// <summary>One node of an imported graph, in execution order: for listing layers and choosing taps.</summary>
/// <param name="Name">The node's name in the file; exporters may leave it empty.</param>
/// <param name="OpType">The ONNX operator, e.g. <c>Conv</c>.</param>
/// <param name="Inputs">Names of the values it reads (graph input, constants, earlier outputs); empty for an omitted optional input.</param>
/// <param name="Outputs">Names of the values it produces; each is a tap that <see cref="OnnxGraphModule.Forward(TorchSharp.torch.Tensor, string?)"/> can stop at.</param>
public sealed record OnnxNodeInfo(string Name, string OpType, IReadOnlyList<string> Inputs, IReadOnlyList<string> Outputs);
