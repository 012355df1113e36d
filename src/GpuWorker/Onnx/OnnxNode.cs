using Onnx;

namespace Cluster.GpuWorker.Onnx;

/// <summary>A parsed graph node: its wiring and typed access to its attributes, as the operator kernels need them.</summary>
internal sealed class OnnxNode
{
    private readonly Dictionary<string, AttributeProto> _attributes;

    public OnnxNode(NodeProto proto, int index)
    {
        Name = proto.Name;
        OpType = proto.OpType;
        Domain = proto.Domain;
        Inputs = [.. proto.Input];
        Outputs = [.. proto.Output];
        Index = index;
        _attributes = new Dictionary<string, AttributeProto>(StringComparer.Ordinal);
        foreach (AttributeProto attribute in proto.Attribute)
        {
            _attributes[attribute.Name] = attribute;
        }
    }

    public string Name { get; }

    public string OpType { get; }

    public string Domain { get; }

    public string[] Inputs { get; }

    public string[] Outputs { get; }

    /// <summary>Position in the file, used to name nodes that have no name.</summary>
    public int Index { get; }

    /// <summary>How errors refer to the node: its name, or its position and first output when it has none.</summary>
    public string DisplayName => Name.Length > 0
        ? Name
        : $"#{Index} ({OpType} -> {(Outputs.Length > 0 ? Outputs[0] : "nothing")})";

    public bool HasAttribute(string name) => _attributes.ContainsKey(name);

    public long GetInt(string name, long defaultValue) =>
        _attributes.TryGetValue(name, out AttributeProto? a) ? a.I : defaultValue;

    public float GetFloat(string name, float defaultValue) =>
        _attributes.TryGetValue(name, out AttributeProto? a) ? a.F : defaultValue;

    public string GetString(string name, string defaultValue) =>
        _attributes.TryGetValue(name, out AttributeProto? a) ? a.S.ToStringUtf8() : defaultValue;

    public long[]? GetInts(string name) =>
        _attributes.TryGetValue(name, out AttributeProto? a) ? [.. a.Ints] : null;

    public float[]? GetFloats(string name) =>
        _attributes.TryGetValue(name, out AttributeProto? a) ? [.. a.Floats] : null;

    public TensorProto? GetTensor(string name) =>
        _attributes.TryGetValue(name, out AttributeProto? a) ? a.T : null;

    public OnnxNodeInfo ToInfo() => new(Name, OpType, Inputs, Outputs);
}
