using System.Collections.Concurrent;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Onnx;

/// <summary>
/// An ONNX graph as a trainable TorchSharp module: the graph's weights are registered Parameters (so
/// <c>parameters()</c>, optimisers, <c>state_dict()</c> and <c>to(device)</c> see them) and every other constant is a
/// buffer; <c>forward</c> runs the nodes in topological order with torch operations, so gradients flow.
/// Any node output can be a tap: <see cref="Forward(Tensor, string?)"/> evaluates only the nodes that value needs.
/// Built by <see cref="OnnxImporter.Import(string)"/>.
/// </summary>
public sealed class OnnxGraphModule : nn.Module<Tensor, Tensor>
{
    private readonly OnnxNode[] _nodes;
    private readonly OnnxKernel[] _kernels;
    private readonly Dictionary<string, int> _producers;
    private readonly Dictionary<string, Constant> _constants;
    private readonly ConcurrentDictionary<string, ExecutionPlan> _plans = new(StringComparer.Ordinal);

    internal OnnxGraphModule(
        string sourcePath,
        int opsetVersion,
        string inputName,
        IReadOnlyList<long?> inputShape,
        string outputName,
        OnnxNode[] nodes,
        IReadOnlyList<OnnxNodeInfo> allNodes,
        IReadOnlyDictionary<string, (Tensor Value, bool Trainable)> constants)
        : base(nameof(OnnxGraphModule))
    {
        SourcePath = sourcePath;
        OpsetVersion = opsetVersion;
        InputName = inputName;
        InputShape = inputShape;
        OutputName = outputName;
        Nodes = allNodes;
        _nodes = nodes;
        _kernels = [.. nodes.Select(n => OnnxOperators.All[n.OpType].Run)];
        _producers = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < nodes.Length; i++)
        {
            foreach (string output in nodes[i].Outputs.Where(o => o.Length > 0))
            {
                _producers[output] = i;
            }
        }
        ValueNames = [.. nodes.SelectMany(n => n.Outputs).Where(o => o.Length > 0)];

        _constants = new Dictionary<string, Constant>(StringComparer.Ordinal);
        var stateNames = new Dictionary<string, string>(StringComparer.Ordinal);
        var taken = new HashSet<string>(StringComparer.Ordinal);
        foreach ((string onnxName, (Tensor value, bool trainable)) in constants)
        {
            string stateName = UniqueStateName(onnxName, taken);
            if (trainable)
            {
                // The Parameter takes over the tensor's handle.
                var parameter = new Parameter(value, requires_grad: true);
                register_parameter(stateName, parameter);
            }
            else
            {
                register_buffer(stateName, value);
            }
            _constants[onnxName] = new Constant(stateName, trainable);
            stateNames[onnxName] = stateName;
        }
        StateDictNames = stateNames;
    }

    /// <summary>The file the graph came from.</summary>
    public string SourcePath { get; }

    /// <summary>Through which the graph's Conv nodes compute (see <see cref="Kernels.ConvolutionRouter"/>); a backbone sets its own.</summary>
    public Kernels.ConvolutionRouter Router { get; set; } = new();

    /// <summary>The ai.onnx opset the file declares.</summary>
    public int OpsetVersion { get; }

    /// <summary>The graph's (only) input.</summary>
    public string InputName { get; }

    /// <summary>The input shape the file declares; null for a symbolic dimension (usually the batch).</summary>
    public IReadOnlyList<long?> InputShape { get; }

    /// <summary>The graph's (first) output: what <c>forward</c> returns.</summary>
    public string OutputName { get; }

    /// <summary>Every value a node produces, in execution order: the names <see cref="Forward(Tensor, string?)"/> accepts.</summary>
    public IReadOnlyList<string> ValueNames { get; }

    /// <summary>Every node of the graph in execution order (Constant nodes included, though they are folded into buffers).</summary>
    public IReadOnlyList<OnnxNodeInfo> Nodes { get; }

    /// <summary>
    /// ONNX constant (initializer or Constant output) name → its parameter or buffer name in <c>state_dict()</c>.
    /// TorchSharp names cannot contain '.', so anything but letters, digits and '_' becomes '_' (with a suffix on clashes).
    /// </summary>
    public IReadOnlyDictionary<string, string> StateDictNames { get; }

    public override Tensor forward(Tensor input) => Forward(input, stopAt: null);

    /// <summary>
    /// Runs the graph up to <paramref name="stopAt"/> (a name from <see cref="ValueNames"/>, or null for the graph
    /// output) and returns that value. Nodes the value does not depend on are not run.
    /// </summary>
    public Tensor Forward(Tensor input, string? stopAt)
    {
        string target = stopAt ?? OutputName;
        return Run(InputName, input, [target])[target];
    }

    /// <summary>
    /// Runs the graph from the value <paramref name="from"/> (its activations given, e.g. cached at a frozen cutoff) to
    /// <paramref name="stopAt"/> (null: the graph output): the trainable suffix of a graph split at a value. Only the
    /// nodes after the cut that the target needs run. A cut must separate the graph: when the target also depends on
    /// a value computed before the cut by another route (a skip connection across it), nothing runs and the
    /// exception names that value.
    /// </summary>
    public Tensor ForwardFrom(Tensor activations, string from, string? stopAt = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(from);
        string target = stopAt ?? OutputName;
        return Run(from, activations, [target])[target];
    }

    /// <summary>Several taps from one pass: each requested value name maps to its tensor.</summary>
    public IReadOnlyDictionary<string, Tensor> ForwardTaps(Tensor input, IReadOnlyCollection<string> taps)
    {
        ArgumentNullException.ThrowIfNull(taps);
        return Run(InputName, input, [.. taps.Distinct(StringComparer.Ordinal)]);
    }

    /// <summary>Computes <paramref name="targets"/> from <paramref name="source"/> (the graph input, or a cut value) given as <paramref name="input"/>.</summary>
    private Dictionary<string, Tensor> Run(string source, Tensor input, string[] targets)
    {
        ArgumentNullException.ThrowIfNull(input);
        ExecutionPlan plan = _plans.GetOrAdd(source + "\n>" + string.Join('\n', targets), _ => Plan(source, targets));
        var values = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var results = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        bool training = this.training;
        try
        {
            foreach (string target in targets.Where(t => t == source))
            {
                results[target] = input.alias();
            }
            for (int step = 0; step < plan.Nodes.Length; step++)
            {
                OnnxNode node = _nodes[plan.Nodes[step]];
                var inputs = new Tensor?[node.Inputs.Length];
                for (int i = 0; i < inputs.Length; i++)
                {
                    inputs[i] = Resolve(node.Inputs[i], source, input, values);
                }
                Tensor[] outputs = RunNode(plan.Nodes[step], inputs, training);
                for (int o = 0; o < outputs.Length; o++)
                {
                    if (o < node.Outputs.Length && node.Outputs[o].Length > 0 && plan.Keep(node.Outputs[o]))
                    {
                        values[node.Outputs[o]] = outputs[o];
                    }
                    else
                    {
                        outputs[o].Dispose();
                    }
                }
                // Intermediate values are freed after their last reader, so a deep graph holds only its live values.
                foreach (string finished in plan.FreedAfter[step])
                {
                    if (values.Remove(finished, out Tensor? done))
                    {
                        done.Dispose();
                    }
                }
            }
            foreach (string target in targets.Where(t => t != source))
            {
                results[target] = values[target];
                values.Remove(target);
            }
            return results;
        }
        finally
        {
            foreach (Tensor leftover in values.Values)
            {
                leftover.Dispose();
            }
        }
    }

    private Tensor[] RunNode(int index, Tensor?[] inputs, bool training)
    {
        OnnxNode node = _nodes[index];
        string file = Path.GetFileName(SourcePath);
        try
        {
            return _kernels[index](new OnnxOperatorContext(node, inputs, OpsetVersion, training, file, Router));
        }
        catch (Exception e) when (e is not InvalidOperationException and not OperationCanceledException)
        {
            // libtorch's messages are multi-line with a native stack; keep its first line and say where it happened.
            string shapes = string.Join(", ", inputs.Select(t => t is null ? "none" : $"[{string.Join(",", t.shape)}]"));
            string reason = e.Message.Split('\n', 2)[0].Trim();
            throw new InvalidOperationException(
                $"{file}: node '{node.DisplayName}' ({node.OpType}) failed on input shapes {shapes}: {reason}", e);
        }
    }

    private Tensor? Resolve(string name, string source, Tensor input, Dictionary<string, Tensor> values)
    {
        if (name.Length == 0)
        {
            return null;
        }
        if (values.TryGetValue(name, out Tensor? value))
        {
            return value;
        }
        if (name == source)
        {
            return input;
        }
        Constant constant = _constants[name];
        return constant.Trainable ? get_parameter(constant.StateName) : get_buffer(constant.StateName);
    }

    private ExecutionPlan Plan(string source, string[] targets)
    {
        foreach (string value in targets.Append(source))
        {
            if (value != InputName && !_producers.ContainsKey(value))
            {
                throw new ArgumentException(
                    $"{Path.GetFileName(SourcePath)} has no value named '{value}'; taps are node outputs such as " +
                    $"{string.Join(", ", ValueNames.Take(3).Select(v => $"'{v}'"))} (see {nameof(ValueNames)}).",
                    nameof(targets));
            }
        }
        // What the cut's own value is computed from: a node after the cut that reads any of these (or the graph input)
        // needs the prefix by a route around the cut.
        HashSet<string> beforeCut = source == InputName ? [] : UpstreamOf(source);
        var needed = new SortedSet<int>();
        var pending = new Stack<(string Value, int Reader)>();
        foreach (string target in targets)
        {
            pending.Push((target, -1));
        }
        while (pending.TryPop(out (string Value, int Reader) item))
        {
            string value = item.Value;
            if (value == source)
            {
                continue;
            }
            if (source != InputName && (value == InputName || beforeCut.Contains(value)))
            {
                string reader = item.Reader < 0 ? "it is asked for" : $"node '{_nodes[item.Reader].DisplayName}' after the cut reads it";
                throw new ArgumentException(
                    $"{Path.GetFileName(SourcePath)}: cutting at '{source}' does not split the graph: '{value}' is computed " +
                    $"before the cut and {reader}; cut at a value every later node reaches only through it (a block's output).");
            }
            if (_producers.TryGetValue(value, out int producer) && needed.Add(producer))
            {
                foreach (string input in _nodes[producer].Inputs.Where(i => i.Length > 0 && !_constants.ContainsKey(i)))
                {
                    pending.Push((input, producer));
                }
            }
        }
        int[] order = [.. needed];
        var lastReader = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int step = 0; step < order.Length; step++)
        {
            foreach (string input in _nodes[order[step]].Inputs.Where(_producers.ContainsKey))
            {
                lastReader[input] = step;
            }
        }
        var targetSet = new HashSet<string>(targets, StringComparer.Ordinal);
        var freedAfter = new List<string>[order.Length];
        for (int step = 0; step < order.Length; step++)
        {
            freedAfter[step] = [];
        }
        var kept = new HashSet<string>(targetSet, StringComparer.Ordinal);
        foreach ((string value, int step) in lastReader)
        {
            kept.Add(value);
            if (!targetSet.Contains(value))
            {
                freedAfter[step].Add(value);
            }
        }
        return new ExecutionPlan(order, [.. freedAfter.Select(f => f.ToArray())], kept);
    }

    /// <summary>Every value <paramref name="value"/> is computed from (the graph input included), itself excluded.</summary>
    private HashSet<string> UpstreamOf(string value)
    {
        var upstream = new HashSet<string>(StringComparer.Ordinal);
        var pending = new Stack<string>();
        pending.Push(value);
        while (pending.TryPop(out string? current))
        {
            if (!_producers.TryGetValue(current, out int producer))
            {
                continue;
            }
            foreach (string input in _nodes[producer].Inputs.Where(i => i.Length > 0 && !_constants.ContainsKey(i)))
            {
                if (upstream.Add(input))
                {
                    pending.Push(input);
                }
            }
        }
        return upstream;
    }

    private static string UniqueStateName(string onnxName, HashSet<string> taken)
    {
        string safe = new([.. onnxName.Select(ch => char.IsAsciiLetterOrDigit(ch) || ch == '_' ? ch : '_')]);
        if (safe.Length == 0)
        {
            safe = "constant";
        }
        string candidate = safe;
        for (int n = 2; !taken.Add(candidate); n++)
        {
            candidate = $"{safe}_{n}";
        }
        return candidate;
    }

    private sealed record Constant(string StateName, bool Trainable);

    /// <summary>Which nodes to run for a set of targets, and when each intermediate value can be freed.</summary>
    private sealed record ExecutionPlan(int[] Nodes, string[][] FreedAfter, HashSet<string> KeptValues)
    {
        public bool Keep(string value) => KeptValues.Contains(value);
    }
}
