using Google.Protobuf;
using Onnx;

namespace Cluster.GpuWorker.Tests.Onnx;

/// <summary>Builds small ONNX models in memory (OnnxSharp's protobuf types), for checking operators one family at a time.</summary>
internal sealed class TestGraph
{
    private readonly ModelProto _model;

    public TestGraph(int opset = 13)
    {
        _model = new ModelProto
        {
            // IR 8 covers opsets up to 18, which is as far as these tests go.
            IrVersion = 8,
            ProducerName = "Cluster.GpuWorker.Tests",
            Graph = new GraphProto { Name = "test" },
        };
        _model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = opset });
    }

    public GraphProto Graph => _model.Graph;

    public TestGraph Input(string name, params long[] shape)
    {
        var tensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Float, Shape = new TensorShapeProto() };
        foreach (long dim in shape)
        {
            tensorType.Shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = dim });
        }
        Graph.Input.Add(new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = tensorType } });
        return this;
    }

    public TestGraph Output(string name, TensorProto.Types.DataType type = TensorProto.Types.DataType.Float)
    {
        Graph.Output.Add(new ValueInfoProto
        {
            Name = name,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)type } },
        });
        return this;
    }

    public TestGraph Floats(string name, float[] values, params long[] dims)
    {
        var tensor = new TensorProto { Name = name, DataType = (int)TensorProto.Types.DataType.Float };
        tensor.Dims.Add(dims);
        tensor.FloatData.Add(values);
        Graph.Initializer.Add(tensor);
        return this;
    }

    /// <summary>Random weights, stored as raw little-endian bytes (the layout most exporters write).</summary>
    public TestGraph RandomFloats(string name, int seed, params long[] dims)
    {
        float[] values = TestData.Normal(seed, (int)dims.Aggregate(1L, (a, b) => a * b));
        var tensor = new TensorProto { Name = name, DataType = (int)TensorProto.Types.DataType.Float };
        tensor.Dims.Add(dims);
        tensor.RawData = ByteString.CopyFrom(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()));
        Graph.Initializer.Add(tensor);
        return this;
    }

    public TestGraph Int64s(string name, long[] values, params long[] dims)
    {
        var tensor = new TensorProto { Name = name, DataType = (int)TensorProto.Types.DataType.Int64 };
        tensor.Dims.Add(dims);
        tensor.Int64Data.Add(values);
        Graph.Initializer.Add(tensor);
        return this;
    }

    public TestGraph Node(string opType, string[] inputs, string[] outputs, params AttributeProto[] attributes) =>
        NamedNode(opType.ToLowerInvariant() + Graph.Node.Count, opType, inputs, outputs, attributes);

    public TestGraph NamedNode(string name, string opType, string[] inputs, string[] outputs, params AttributeProto[] attributes)
    {
        var node = new NodeProto { Name = name, OpType = opType };
        node.Input.Add(inputs);
        node.Output.Add(outputs);
        node.Attribute.Add(attributes);
        Graph.Node.Add(node);
        return this;
    }

    public byte[] ToBytes() => _model.ToByteArray();

    public string WriteTo(string directory, string fileName = "model.onnx")
    {
        string path = Path.Combine(directory, fileName);
        File.WriteAllBytes(path, ToBytes());
        return path;
    }

    public static AttributeProto Ints(string name, params long[] values)
    {
        var attribute = new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Ints };
        attribute.Ints.Add(values);
        return attribute;
    }

    public static AttributeProto Int(string name, long value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = value };

    public static AttributeProto Float(string name, float value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.Float, F = value };

    public static AttributeProto String(string name, string value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.String, S = ByteString.CopyFromUtf8(value) };

    public static AttributeProto Tensor(string name, TensorProto value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.Tensor, T = value };
}
