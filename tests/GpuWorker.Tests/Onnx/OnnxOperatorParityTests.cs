using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Onnx;
using Shouldly;
using TorchSharp;
using static Cluster.GpuWorker.Tests.Onnx.TestGraph;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Onnx;

/// <summary>
/// One small graph per operator family, run through our import and through ONNX Runtime on the same random input.
/// The cases lean on what is easy to get wrong: asymmetric pads, ceil mode, opset-dependent attributes.
/// </summary>
public sealed class OnnxOperatorParityTests : IDisposable
{
    private const double Tolerance = 1e-5;
    private readonly string _directory = Directory.CreateTempSubdirectory("onnx-ops-").FullName;

    public OnnxOperatorParityTests() => TorchRuntime.Initialize();

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    public static TheoryData<string> Cases => [.. s_cases.Keys];

    private static readonly Dictionary<string, (Func<TestGraph> Build, long[] InputShape)> s_cases = new()
    {
        ["conv asymmetric pads, groups, strides, dilations"] = (() => new TestGraph()
            .Input("x", 2, 4, 9, 8).RandomFloats("w", 1, 6, 2, 3, 3).RandomFloats("b", 2, 6)
            .Node("Conv", ["x", "w", "b"], ["y"], Ints("pads", 2, 1, 0, 1), Ints("strides", 2, 1), Ints("dilations", 1, 2), Int("group", 2))
            .Output("y"), [2, 4, 9, 8]),
        ["conv pads larger at the end"] = (() => new TestGraph()
            .Input("x", 1, 3, 8, 8).RandomFloats("w", 3, 5, 3, 3, 3)
            .Node("Conv", ["x", "w"], ["y"], Ints("pads", 0, 1, 2, 2), Ints("strides", 2, 2))
            .Output("y"), [1, 3, 8, 8]),
        ["conv like ResNet18.onnx conv1 (7x7 stride 2, pads 3,3,2,2)"] = (() => new TestGraph(8)
            .Input("x", 1, 3, 32, 32).RandomFloats("w", 4, 8, 3, 7, 7)
            .Node("Conv", ["x", "w"], ["y"], Ints("kernel_shape", 7, 7), Ints("pads", 3, 3, 2, 2), Ints("strides", 2, 2), String("auto_pad", "NOTSET"))
            .Output("y"), [1, 3, 32, 32]),
        ["conv auto_pad SAME_UPPER"] = (() => new TestGraph()
            .Input("x", 1, 2, 7, 6).RandomFloats("w", 5, 3, 2, 4, 3)
            .Node("Conv", ["x", "w"], ["y"], String("auto_pad", "SAME_UPPER"), Ints("strides", 2, 2))
            .Output("y"), [1, 2, 7, 6]),
        ["conv auto_pad SAME_LOWER"] = (() => new TestGraph()
            .Input("x", 1, 2, 7, 6).RandomFloats("w", 6, 3, 2, 4, 3)
            .Node("Conv", ["x", "w"], ["y"], String("auto_pad", "SAME_LOWER"), Ints("strides", 2, 2))
            .Output("y"), [1, 2, 7, 6]),
        ["conv auto_pad VALID"] = (() => new TestGraph()
            .Input("x", 1, 2, 7, 6).RandomFloats("w", 7, 3, 2, 3, 3)
            .Node("Conv", ["x", "w"], ["y"], String("auto_pad", "VALID"))
            .Output("y"), [1, 2, 7, 6]),
        ["conv depthwise"] = (() => new TestGraph()
            .Input("x", 1, 4, 6, 6).RandomFloats("w", 8, 4, 1, 3, 3).RandomFloats("b", 9, 4)
            .Node("Conv", ["x", "w", "b"], ["y"], Ints("pads", 1, 1, 1, 1), Int("group", 4))
            .Output("y"), [1, 4, 6, 6]),
        ["conv 1-D"] = (() => new TestGraph()
            .Input("x", 2, 3, 11).RandomFloats("w", 10, 4, 3, 3)
            .Node("Conv", ["x", "w"], ["y"], Ints("pads", 2, 1), Ints("strides", 2))
            .Output("y"), [2, 3, 11]),
        ["maxpool asymmetric pads with ceil_mode"] = (() => new TestGraph()
            .Input("x", 1, 3, 10, 9)
            .Node("MaxPool", ["x"], ["y"], Ints("kernel_shape", 3, 3), Ints("strides", 2, 2), Ints("pads", 1, 0, 0, 1), Int("ceil_mode", 1))
            .Output("y"), [1, 3, 10, 9]),
        ["maxpool like ResNet18.onnx (3x3 stride 2, pads 1,1,0,0)"] = (() => new TestGraph(8)
            .Input("x", 1, 4, 16, 16)
            .Node("MaxPool", ["x"], ["y"], Ints("kernel_shape", 3, 3), Ints("strides", 2, 2), Ints("pads", 1, 1, 0, 0), Int("storage_order", 0))
            .Output("y"), [1, 4, 16, 16]),
        ["maxpool ceil_mode dropping a window that starts in the padding"] = (() => new TestGraph()
            .Input("x", 1, 2, 6, 6)
            .Node("MaxPool", ["x"], ["y"], Ints("kernel_shape", 2, 2), Ints("strides", 2, 2), Ints("pads", 0, 0, 1, 1), Int("ceil_mode", 1))
            .Output("y"), [1, 2, 6, 6]),
        ["maxpool pads larger at the end, dilated"] = (() => new TestGraph()
            .Input("x", 1, 2, 9, 9)
            .Node("MaxPool", ["x"], ["y"], Ints("kernel_shape", 3, 2), Ints("strides", 1, 2), Ints("pads", 0, 0, 2, 1), Ints("dilations", 2, 1))
            .Output("y"), [1, 2, 9, 9]),
        ["maxpool auto_pad SAME_UPPER"] = (() => new TestGraph()
            .Input("x", 1, 2, 7, 7)
            .Node("MaxPool", ["x"], ["y"], Ints("kernel_shape", 3, 3), Ints("strides", 2, 2), String("auto_pad", "SAME_UPPER"))
            .Output("y"), [1, 2, 7, 7]),
        ["averagepool excluding asymmetric pads with ceil_mode"] = (() => new TestGraph()
            .Input("x", 1, 3, 10, 9)
            .Node("AveragePool", ["x"], ["y"], Ints("kernel_shape", 3, 3), Ints("strides", 2, 2), Ints("pads", 1, 0, 0, 1), Int("ceil_mode", 1))
            .Output("y"), [1, 3, 10, 9]),
        ["averagepool including asymmetric pads"] = (() => new TestGraph()
            .Input("x", 1, 3, 10, 9)
            .Node("AveragePool", ["x"], ["y"], Ints("kernel_shape", 3, 3), Ints("strides", 2, 2), Ints("pads", 1, 1, 0, 0), Int("count_include_pad", 1))
            .Output("y"), [1, 3, 10, 9]),
        ["averagepool including symmetric pads with ceil_mode"] = (() => new TestGraph()
            .Input("x", 1, 2, 8, 8)
            .Node("AveragePool", ["x"], ["y"], Ints("kernel_shape", 3, 3), Ints("strides", 2, 2), Ints("pads", 1, 1, 1, 1), Int("count_include_pad", 1), Int("ceil_mode", 1))
            .Output("y"), [1, 2, 8, 8]),
        ["averagepool excluding pads larger at the end"] = (() => new TestGraph()
            .Input("x", 1, 2, 8, 8)
            .Node("AveragePool", ["x"], ["y"], Ints("kernel_shape", 3, 3), Ints("strides", 2, 2), Ints("pads", 0, 1, 2, 2))
            .Output("y"), [1, 2, 8, 8]),
        ["averagepool like ResNet18.onnx's global pool (7x7, count_include_pad 0)"] = (() => new TestGraph(8)
            .Input("x", 2, 5, 7, 7)
            .Node("AveragePool", ["x"], ["y"], Ints("kernel_shape", 7, 7), Ints("strides", 1, 1), Ints("pads", 0, 0, 0, 0), Int("count_include_pad", 0))
            .Output("y"), [2, 5, 7, 7]),
        ["global average and max pool"] = (() => new TestGraph()
            .Input("x", 2, 3, 5, 4)
            .Node("GlobalAveragePool", ["x"], ["a"]).Node("GlobalMaxPool", ["x"], ["m"]).Node("Add", ["a", "m"], ["y"])
            .Output("y"), [2, 3, 5, 4]),
        ["batchnormalization with running statistics"] = (() => new TestGraph()
            .Input("x", 2, 3, 4, 4).RandomFloats("scale", 11, 3).RandomFloats("bias", 12, 3).RandomFloats("mean", 13, 3)
            .Floats("var", [0.5f, 1.5f, 2.5f], 3)
            .Node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"], Float("epsilon", 1e-3f))
            .Output("y"), [2, 3, 4, 4]),
        ["gemm transB with alpha and beta"] = (() => new TestGraph()
            .Input("x", 3, 5).RandomFloats("w", 14, 4, 5).RandomFloats("c", 15, 4)
            .Node("Gemm", ["x", "w", "c"], ["y"], Int("transB", 1), Float("alpha", 0.5f), Float("beta", 2f))
            .Output("y"), [3, 5]),
        ["gemm transB like a classifier layer"] = (() => new TestGraph()
            .Input("x", 3, 5).RandomFloats("w", 16, 4, 5).RandomFloats("c", 17, 4)
            .Node("Gemm", ["x", "w", "c"], ["y"], Int("transB", 1))
            .Output("y"), [3, 5]),
        ["gemm transA with a matrix bias"] = (() => new TestGraph()
            .Input("x", 5, 3).RandomFloats("w", 18, 5, 4).RandomFloats("c", 19, 3, 4)
            .Node("Gemm", ["x", "w", "c"], ["y"], Int("transA", 1))
            .Output("y"), [5, 3]),
        ["matmul batched"] = (() => new TestGraph()
            .Input("x", 2, 3, 5).RandomFloats("w", 20, 5, 4)
            .Node("MatMul", ["x", "w"], ["y"])
            .Output("y"), [2, 3, 5]),
        ["concat and split"] = (() => new TestGraph(11)
            .Input("x", 2, 6, 3).RandomFloats("c", 21, 2, 2, 3)
            .Node("Split", ["x"], ["s0", "s1", "s2"], Int("axis", 1), Ints("split", 1, 2, 3))
            .Node("Concat", ["s2", "c", "s0", "s1"], ["y"], Int("axis", -2))
            .Output("y"), [2, 6, 3]),
        ["split into equal parts with sizes as an input"] = (() => new TestGraph()
            .Input("x", 2, 6, 3).Int64s("sizes", [4, 2], 2)
            .Node("Split", ["x", "sizes"], ["s0", "s1"], Int("axis", 1))
            .Node("Sub", ["s1", "s1"], ["z"]).Node("Concat", ["s1", "s0", "z"], ["y"], Int("axis", 1))
            .Output("y"), [2, 6, 3]),
        ["reshape with 0 and -1, flatten, transpose"] = (() => new TestGraph()
            .Input("x", 2, 3, 4, 5).Int64s("shape", [0, -1, 10], 3)
            .Node("Reshape", ["x", "shape"], ["r"]).Node("Transpose", ["r"], ["t"], Ints("perm", 2, 0, 1))
            .Node("Flatten", ["t"], ["y"], Int("axis", 2))
            .Output("y"), [2, 3, 4, 5]),
        ["squeeze and unsqueeze with axes as inputs"] = (() => new TestGraph()
            .Input("x", 2, 1, 3, 1).Int64s("sq", [1, -1], 2).Int64s("unsq", [0, 3], 2)
            .Node("Squeeze", ["x", "sq"], ["s"]).Node("Unsqueeze", ["s", "unsq"], ["y"])
            .Output("y"), [2, 1, 3, 1]),
        ["squeeze and unsqueeze with axes as attributes (opset 11)"] = (() => new TestGraph(11)
            .Input("x", 2, 1, 3, 1)
            .Node("Squeeze", ["x"], ["s"], Ints("axes", 1)).Node("Unsqueeze", ["s"], ["y"], Ints("axes", -1, 0))
            .Output("y"), [2, 1, 3, 1]),
        ["clip with bounds as attributes (opset 6)"] = (() => new TestGraph(6)
            .Input("x", 3, 7)
            .Node("Clip", ["x"], ["y"], Float("min", -0.5f), Float("max", 0.75f))
            .Output("y"), [3, 7]),
        ["clip with bounds as inputs, max omitted"] = (() => new TestGraph()
            .Input("x", 3, 7).Floats("lo", [-0.25f])
            .Node("Clip", ["x", "lo", ""], ["y"])
            .Output("y"), [3, 7]),
        ["clip as relu6 (both bounds as inputs)"] = (() => new TestGraph()
            .Input("x", 3, 7).Floats("lo", [0f]).Floats("hi", [0.6f])
            .Node("Clip", ["x", "lo", "hi"], ["y"])
            .Output("y"), [3, 7]),
        ["pad constant with a value"] = (() => new TestGraph()
            .Input("x", 1, 2, 4, 5).Int64s("pads", [0, 1, 2, 1, 0, 0, 1, 3], 8).Floats("v", [1.5f])
            .Node("Pad", ["x", "pads", "v"], ["y"], String("mode", "constant"))
            .Output("y"), [1, 2, 4, 5]),
        ["pad reflect"] = (() => new TestGraph()
            .Input("x", 1, 2, 4, 5).Int64s("pads", [0, 0, 2, 1, 0, 0, 1, 3], 8)
            .Node("Pad", ["x", "pads"], ["y"], String("mode", "reflect"))
            .Output("y"), [1, 2, 4, 5]),
        ["pad edge"] = (() => new TestGraph()
            .Input("x", 1, 2, 4, 5).Int64s("pads", [0, 0, 2, 1, 0, 0, 1, 3], 8)
            .Node("Pad", ["x", "pads"], ["y"], String("mode", "edge"))
            .Output("y"), [1, 2, 4, 5]),
        ["pad with pads as an attribute (opset 2)"] = (() => new TestGraph(2)
            .Input("x", 1, 2, 4, 5)
            .Node("Pad", ["x"], ["y"], Ints("pads", 0, 0, 1, 2, 0, 0, 2, 1), Float("value", -2f))
            .Output("y"), [1, 2, 4, 5]),
        ["softmax over the last axis (opset 13)"] = (() => new TestGraph()
            .Input("x", 2, 3, 4)
            .Node("Softmax", ["x"], ["y"], Int("axis", -1))
            .Output("y"), [2, 3, 4]),
        ["softmax coerced to 2-D at axis 1 (opset 11)"] = (() => new TestGraph(11)
            .Input("x", 2, 3, 4)
            .Node("Softmax", ["x"], ["y"])
            .Output("y"), [2, 3, 4]),
        ["logsoftmax over axis 1"] = (() => new TestGraph()
            .Input("x", 2, 3, 4)
            .Node("LogSoftmax", ["x"], ["y"], Int("axis", 1))
            .Output("y"), [2, 3, 4]),
        ["activations: relu, leakyrelu, sigmoid, tanh, prelu"] = (() => new TestGraph()
            .Input("x", 2, 3, 4, 4).RandomFloats("slope", 22, 3, 1, 1)
            .Node("Relu", ["x"], ["a"]).Node("LeakyRelu", ["x"], ["b"], Float("alpha", 0.2f)).Node("Sigmoid", ["x"], ["c"])
            .Node("Tanh", ["x"], ["d"]).Node("PRelu", ["x", "slope"], ["e"])
            .Node("Sum", ["a", "b", "c", "d", "e"], ["y"])
            .Output("y"), [2, 3, 4, 4]),
        ["hardsigmoid and hardswish (MobileNet v3)"] = (() => new TestGraph(14)
            .Input("x", 2, 3, 4)
            .Node("HardSigmoid", ["x"], ["a"], Float("alpha", 1f / 6f), Float("beta", 0.5f))
            .Node("HardSigmoid", ["x"], ["b"])
            .Node("HardSwish", ["x"], ["c"])
            .Node("Concat", ["a", "b", "c"], ["y"], Int("axis", 0))
            .Output("y"), [2, 3, 4]),
        ["elementwise add, sub, mul, div with broadcasting"] = (() => new TestGraph()
            .Input("x", 2, 3, 4).RandomFloats("r", 23, 3, 1).RandomFloats("c", 24, 4)
            .Floats("d", [2f, -4f, 0.5f, 8f], 4)
            .Node("Add", ["x", "r"], ["a"]).Node("Mul", ["a", "c"], ["m"]).Node("Sub", ["m", "x"], ["s"]).Node("Div", ["s", "d"], ["y"])
            .Output("y"), [2, 3, 4]),
        ["reducemean with keepdims, axes as attribute (opset 13)"] = (() => new TestGraph()
            .Input("x", 2, 3, 4, 5)
            .Node("ReduceMean", ["x"], ["a"], Ints("axes", 2, 3)).Node("ReduceMean", ["x"], ["b"], Ints("axes", -1), Int("keepdims", 0))
            .Node("Flatten", ["a"], ["fa"], Int("axis", 1)).Node("Flatten", ["b"], ["fb"], Int("axis", 1))
            .Node("Concat", ["fa", "fb"], ["y"], Int("axis", 1))
            .Output("y"), [2, 3, 4, 5]),
        ["reducemean with axes as an input (opset 18)"] = (() => new TestGraph(18)
            .Input("x", 2, 3, 4, 5).Int64s("axes", [1, 2], 2)
            .Node("ReduceMean", ["x", "axes"], ["y"], Int("keepdims", 1))
            .Output("y"), [2, 3, 4, 5]),
        ["exporter shape arithmetic: Shape, Gather, Constant, Unsqueeze, Concat, Reshape"] = (() => new TestGraph()
            .Input("x", 2, 3, 4, 5)
            .Node("Shape", ["x"], ["shape"])
            .Node("Constant", [], ["zero"], Tensor("value", Scalar64(0)))
            .Node("Gather", ["shape", "zero"], ["batch"], Int("axis", 0))
            .Node("Constant", [], ["axes"], Tensor("value", Vector64(0)))
            .Node("Unsqueeze", ["batch", "axes"], ["batch1"])
            .Node("Constant", [], ["minus1"], Tensor("value", Vector64(-1)))
            .Node("Concat", ["batch1", "minus1"], ["target"], Int("axis", 0))
            .Node("Reshape", ["x", "target"], ["y"])
            .Output("y"), [2, 3, 4, 5]),
        ["gather rows with negative indices and slice with steps"] = (() => new TestGraph()
            .Input("x", 6, 4).Int64s("idx", [-1, 0, 2, 2], 2, 2)
            .Int64s("starts", [5, 0], 2).Int64s("ends", [-100, 10], 2).Int64s("axes", [0, 1], 2).Int64s("steps", [-2, 3], 2)
            .Node("Gather", ["x", "idx"], ["g"], Int("axis", 0))
            .Node("Slice", ["x", "starts", "ends", "axes", "steps"], ["s"])
            .Node("Flatten", ["g"], ["fg"], Int("axis", 0)).Node("Flatten", ["s"], ["fs"], Int("axis", 0))
            .Node("Concat", ["fg", "fs"], ["y"], Int("axis", 1))
            .Output("y"), [6, 4]),
        ["dropout, identity and cast in inference"] = (() => new TestGraph()
            .Input("x", 2, 3)
            .Node("Dropout", ["x"], ["d"]).Node("Identity", ["d"], ["i"])
            .Node("Cast", ["i"], ["h"], Int("to", (long)global::Onnx.TensorProto.Types.DataType.Double))
            .Node("Cast", ["h"], ["y"], Int("to", (long)global::Onnx.TensorProto.Types.DataType.Float))
            .Output("y"), [2, 3]),
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Operator_family_matches_onnx_runtime(string family)
    {
        (Func<TestGraph> build, long[] shape) = s_cases[family];
        TestGraph graph = build();
        float[] input = TestData.Normal(family.Length, (int)shape.Aggregate(1L, (a, b) => a * b));

        OnnxRuntimeReference.Result expected = OnnxRuntimeReference.Run(graph.ToBytes(), "x", input, shape, "y");
        using OnnxGraphModule module = OnnxImporter.Import(graph.WriteTo(_directory));
        module.eval();
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        Tensor actual = module.forward(tensor(input, shape));

        actual.shape.ShouldBe(expected.Shape, family);
        double error = TestData.RelativeMaxError(actual.data<float>().ToArray(), expected.Values);
        error.ShouldBeLessThan(Tolerance, family);
    }

    private static global::Onnx.TensorProto Scalar64(long value)
    {
        var tensor = new global::Onnx.TensorProto { DataType = (int)global::Onnx.TensorProto.Types.DataType.Int64 };
        tensor.Int64Data.Add(value);
        return tensor;
    }

    private static global::Onnx.TensorProto Vector64(params long[] values)
    {
        var tensor = new global::Onnx.TensorProto { DataType = (int)global::Onnx.TensorProto.Types.DataType.Int64 };
        tensor.Dims.Add(values.Length);
        tensor.Int64Data.Add(values);
        return tensor;
    }
}
