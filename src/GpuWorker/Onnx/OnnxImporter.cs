using Google.Protobuf;
using Onnx;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Onnx;

/// <summary>Reads an ONNX model file into a trainable <see cref="OnnxGraphModule"/> (on the CPU; move it with <c>to()</c>).</summary>
public static class OnnxImporter
{
    /// <summary>
    /// Parses and checks the whole file before building anything: an unreadable or truncated file, an operator or
    /// data type this importer does not implement, or broken wiring fails here with an
    /// <see cref="OnnxImportException"/> whose message starts with the file's name.
    /// </summary>
    public static OnnxGraphModule Import(string path)
    {
        ModelProto model = ReadModel(path);
        return Build(model, path);
    }

    /// <summary>
    /// Builds a model already read (and possibly adjusted) by the caller; <paramref name="path"/> names it in messages.
    /// The same checks as <see cref="Import(string)"/>.
    /// </summary>
    internal static OnnxGraphModule Import(ModelProto model, string path) => Build(model, path);

    /// <summary>The file's protobuf, or an <see cref="OnnxImportException"/> naming the file when it cannot be read.</summary>
    internal static ModelProto ReadModel(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string file = Path.GetFileName(path);
        if (!File.Exists(path))
        {
            throw new OnnxImportException($"{file}: no such file ({Path.GetFullPath(path)}).");
        }
        try
        {
            using FileStream stream = File.OpenRead(path);
            return ModelProto.Parser.ParseFrom(stream);
        }
        catch (InvalidProtocolBufferException e)
        {
            // Protobuf's first sentence says what broke; the rest is speculation about why.
            string reason = e.Message.Split('.', 2)[0];
            throw new OnnxImportException($"{file}: not a readable ONNX model; the file is truncated or corrupt ({reason}).", e);
        }
        catch (IOException e)
        {
            throw new OnnxImportException($"{file}: cannot be read ({e.Message.TrimEnd('.')}).", e);
        }
    }

    private static OnnxGraphModule Build(ModelProto model, string path)
    {
        string file = Path.GetFileName(path);
        GraphProto graph = model.Graph;
        if (graph is null || graph.Node.Count == 0)
        {
            throw new OnnxImportException($"{file}: contains no graph nodes; it is not an ONNX model, or it is truncated.");
        }
        int opset = (int)(model.OpsetImport.FirstOrDefault(o => o.Domain is "" or "ai.onnx")?.Version ?? 0);
        if (opset == 0)
        {
            throw new OnnxImportException($"{file}: declares no ai.onnx opset version, so its operators cannot be interpreted.");
        }

        OnnxNode[] all = [.. graph.Node.Select((n, i) => new OnnxNode(n, i))];
        foreach (OnnxNode node in all)
        {
            CheckOperator(file, node, opset);
        }

        // Constants: initializers, and Constant nodes folded into the same table.
        var constantProtos = new Dictionary<string, (TensorProto Proto, string What)>(StringComparer.Ordinal);
        foreach (TensorProto initializer in graph.Initializer)
        {
            constantProtos[initializer.Name] = (initializer, $"initializer '{initializer.Name}'");
        }
        foreach (OnnxNode node in all.Where(n => n.OpType == "Constant"))
        {
            constantProtos[node.Outputs[0]] = (ConstantValue(file, node), $"constant '{node.Outputs[0]}'");
        }

        // Graphs from IR version < 4 list initializers among the inputs too; the real input is what is left.
        string[] inputs = [.. graph.Input.Select(i => i.Name).Where(n => !constantProtos.ContainsKey(n))];
        if (inputs.Length != 1)
        {
            throw new OnnxImportException(
                $"{file}: the graph has {inputs.Length} inputs ({string.Join(", ", inputs.Select(i => $"'{i}'"))}); this importer runs graphs with exactly one.");
        }
        string inputName = inputs[0];
        if (graph.Output.Count == 0)
        {
            throw new OnnxImportException($"{file}: the graph declares no output.");
        }
        string outputName = graph.Output[0].Name;

        OnnxNode[] executable = Sort(file, [.. all.Where(n => n.OpType != "Constant")], inputName, constantProtos.Keys);
        if (outputName != inputName && !executable.Any(n => n.Outputs.Contains(outputName)) && !constantProtos.ContainsKey(outputName))
        {
            throw new OnnxImportException($"{file}: the graph output '{outputName}' is produced by no node.");
        }
        if (constantProtos.ContainsKey(outputName))
        {
            throw new OnnxImportException($"{file}: the graph output '{outputName}' is a constant; there is nothing to run.");
        }

        // A floating-point constant wired into a weight slot (Conv W and B, Gemm, MatMul, BatchNorm scale and bias)
        // becomes a Parameter; everything else is a buffer. Constants no node reads are left out.
        var trainable = new HashSet<string>(StringComparer.Ordinal);
        var used = new HashSet<string>(StringComparer.Ordinal);
        foreach (OnnxNode node in executable)
        {
            int[] weightSlots = OnnxOperators.All[node.OpType].WeightInputs;
            for (int i = 0; i < node.Inputs.Length; i++)
            {
                used.Add(node.Inputs[i]);
                if (weightSlots.Contains(i))
                {
                    trainable.Add(node.Inputs[i]);
                }
            }
        }
        var constants = new Dictionary<string, (Tensor Value, bool Trainable)>(StringComparer.Ordinal);
        try
        {
            foreach ((string name, (TensorProto proto, string what)) in constantProtos.Where(c => used.Contains(c.Key)))
            {
                Tensor value = OnnxTensors.ToTorch(proto, path, what).DetachFromDisposeScope();
                constants[name] = (value, trainable.Contains(name) && is_floating_point(value));
            }
        }
        catch
        {
            foreach ((Tensor value, _) in constants.Values)
            {
                value.Dispose();
            }
            throw;
        }

        long?[] inputShape = [.. graph.Input.First(i => i.Name == inputName).Type?.TensorType?.Shape?.Dim
            .Select(d => d.ValueCase == TensorShapeProto.Types.Dimension.ValueOneofCase.DimValue ? d.DimValue : (long?)null) ?? []];
        return new OnnxGraphModule(path, opset, inputName, inputShape, outputName, executable,
            [.. all.Select(n => n.ToInfo())], constants);
    }

    private static void CheckOperator(string file, OnnxNode node, int opset)
    {
        string domain = node.Domain is "" or "ai.onnx" ? "" : node.Domain + ":";
        if (domain.Length > 0 || !OnnxOperators.All.TryGetValue(node.OpType, out OnnxOperator? op))
        {
            throw new OnnxImportException(
                $"{file}: node '{node.DisplayName}' uses op '{domain}{node.OpType}', which this importer does not support (supported: {OnnxOperators.SupportedList}).");
        }
        if (op.Check?.Invoke(node, opset) is { } problem)
        {
            throw new OnnxImportException($"{file}: node '{node.DisplayName}' ({node.OpType}): {problem}.");
        }
    }

    private static TensorProto ConstantValue(string file, OnnxNode node)
    {
        if (node.GetTensor("value") is { } tensor)
        {
            return tensor;
        }
        // Opset 12 added scalar and list shorthands.
        var proto = new TensorProto();
        if (node.HasAttribute("value_float"))
        {
            proto.DataType = (int)TensorProto.Types.DataType.Float;
            proto.FloatData.Add(node.GetFloat("value_float", 0f));
        }
        else if (node.GetFloats("value_floats") is { } floats)
        {
            proto.DataType = (int)TensorProto.Types.DataType.Float;
            proto.Dims.Add(floats.Length);
            proto.FloatData.Add(floats);
        }
        else if (node.HasAttribute("value_int"))
        {
            proto.DataType = (int)TensorProto.Types.DataType.Int64;
            proto.Int64Data.Add(node.GetInt("value_int", 0));
        }
        else if (node.GetInts("value_ints") is { } ints)
        {
            proto.DataType = (int)TensorProto.Types.DataType.Int64;
            proto.Dims.Add(ints.Length);
            proto.Int64Data.Add(ints);
        }
        else
        {
            throw new OnnxImportException(
                $"{file}: node '{node.DisplayName}' (Constant) holds a kind of value this importer does not support (sparse or string).");
        }
        return proto;
    }

    /// <summary>
    /// Topological order (ONNX requires files to be sorted already, but not every exporter does): stable, so a sorted
    /// file keeps its order. Fails on a value nothing provides, a value produced twice, or a cycle.
    /// </summary>
    private static OnnxNode[] Sort(string file, OnnxNode[] nodes, string inputName, IEnumerable<string> constantNames)
    {
        var available = new HashSet<string>(constantNames, StringComparer.Ordinal) { inputName, "" };
        var producers = new Dictionary<string, OnnxNode>(StringComparer.Ordinal);
        foreach (OnnxNode node in nodes)
        {
            foreach (string output in node.Outputs.Where(o => o.Length > 0))
            {
                if (!producers.TryAdd(output, node) || available.Contains(output))
                {
                    throw new OnnxImportException($"{file}: value '{output}' is produced more than once (again by node '{node.DisplayName}').");
                }
            }
        }
        foreach (OnnxNode node in nodes)
        {
            foreach (string input in node.Inputs.Where(i => !available.Contains(i) && !producers.ContainsKey(i)))
            {
                throw new OnnxImportException(
                    $"{file}: node '{node.DisplayName}' reads '{input}', which no node, initializer or graph input provides.");
            }
        }
        var sorted = new List<OnnxNode>(nodes.Length);
        var remaining = new List<OnnxNode>(nodes);
        while (remaining.Count > 0)
        {
            int before = sorted.Count;
            for (int i = 0; i < remaining.Count; i++)
            {
                OnnxNode node = remaining[i];
                if (node.Inputs.All(available.Contains))
                {
                    sorted.Add(node);
                    foreach (string output in node.Outputs)
                    {
                        available.Add(output);
                    }
                    remaining.RemoveAt(i);
                    i--;
                }
            }
            if (sorted.Count == before)
            {
                throw new OnnxImportException(
                    $"{file}: the graph has a cycle through node '{remaining[0].DisplayName}'.");
            }
        }
        return [.. sorted];
    }
}
