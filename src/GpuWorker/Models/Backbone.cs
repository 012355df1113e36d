using Cluster.GpuWorker.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Models;

/// <summary>One step of a backbone's forward pass; its name is a tap (a place to extract features or freeze up to).</summary>
/// <param name="Name">The torchvision module path of the step (`layer3.1`, `features.26`, `avgpool`).</param>
/// <param name="Module">The module the step runs, or null for a parameter-free function (flatten, global pooling).</param>
/// <param name="Parameters">For steps of an imported graph (no module of their own): the parameters they add.</param>
public sealed record BackboneStep(string Name, nn.Module? Module, Func<Tensor, Tensor> Run, bool IsClassifier = false, long? Parameters = null)
{
    public long ParameterCount => Parameters ?? (Module is null ? 0 : Backbone.CountParameters(Module));
}

/// <summary>
/// A CNN as an ordered list of named steps, so it can run to any tap (feature extraction, the frozen prefix)
/// or from any tap to the end (training the unfrozen suffix on cached activations). It registers the source
/// model's children under their own names, so its state_dict keys are exactly torchvision's: weights saved
/// from PyTorch load without renaming.
/// </summary>
public sealed class Backbone : nn.Module<Tensor, Tensor>
{
    private readonly List<BackboneStep> _steps;
    private readonly Dictionary<string, int> _stepIndex;
    private readonly Dictionary<string, string> _aliases;

    /// <summary>
    /// For an imported graph (ONNX), whose taps are values inside one graph rather than a chain of modules:
    /// runs the graph from the image up to step i. Null for chains of modules.
    /// </summary>
    private readonly Func<Tensor, int, Tensor>? _graphTo;

    /// <summary>For an imported graph: runs the graph from step i's activations to the end (the graph split at that value).</summary>
    private readonly Func<Tensor, int, Tensor>? _graphFrom;

    /// <summary>For an imported graph: the activations at several steps from one run of the graph, keyed by step index.</summary>
    private readonly Func<Tensor, IReadOnlyCollection<int>, Dictionary<int, Tensor>>? _graphTaps;

    internal Backbone(
        string name,
        IEnumerable<(string Name, nn.Module Module)> children,
        IReadOnlyList<BackboneStep> steps,
        IReadOnlyDictionary<string, string> aliases,
        bool includeTop,
        ConvolutionRouter router,
        Func<Tensor, int, Tensor> graphTo,
        Func<Tensor, int, Tensor> graphFrom,
        Func<Tensor, IReadOnlyCollection<int>, Dictionary<int, Tensor>>? graphTaps = null)
        : this(name, children, steps, aliases, includeTop, router)
    {
        _graphTo = graphTo;
        _graphFrom = graphFrom;
        _graphTaps = graphTaps;
    }

    internal Backbone(
        string name,
        IEnumerable<(string Name, nn.Module Module)> children,
        IReadOnlyList<BackboneStep> steps,
        IReadOnlyDictionary<string, string> aliases,
        bool includeTop,
        ConvolutionRouter router)
        : base(name)
    {
        Router = router;
        foreach ((string childName, nn.Module module) in children)
        {
            register_module(childName, module);
        }
        _steps = steps.ToList();
        _stepIndex = _steps.Select((s, i) => (s.Name, i)).ToDictionary(x => x.Name, x => x.i, StringComparer.Ordinal);
        _aliases = new Dictionary<string, string>(aliases, StringComparer.Ordinal);
        IncludeTop = includeTop;
    }

    /// <summary>
    /// Through which every convolution of this backbone computes (its modules' and an imported graph's): unchecked
    /// libtorch kernels until <see cref="InferenceModel.Prepare"/> installs verified routes.
    /// </summary>
    public ConvolutionRouter Router { get; }

    /// <summary>False when built without its classifier (Keras' include_top=False): it ends at the global pool.</summary>
    public bool IncludeTop { get; }

    public IReadOnlyList<BackboneStep> Steps => _steps;

    /// <summary>Whether this is an imported graph (taps are values inside one graph, not a chain of modules).</summary>
    public bool IsImportedGraph => _graphTo is not null;

    /// <summary>Alternative tap names users know (Keras `block4_pool`, ResNet `conv4_x`) → step names.</summary>
    public IReadOnlyDictionary<string, string> Aliases => _aliases;

    /// <summary>Every name `ResolveTap` accepts: step names and aliases.</summary>
    public IEnumerable<string> TapNames => _steps.Select(s => s.Name).Concat(_aliases.Keys);

    public override Tensor forward(Tensor input) => _graphTo is null ? Run(input, 0, _steps.Count) : _graphTo(input, _steps.Count - 1);

    /// <summary>Runs the steps up to and including <paramref name="tap"/>.</summary>
    public Tensor ForwardTo(Tensor input, string tap) =>
        _graphTo is null ? Run(input, 0, ResolveTap(tap) + 1) : _graphTo(input, ResolveTap(tap));

    /// <summary>
    /// The activations at several taps from one pass (each a copy the caller owns, keyed by the name asked for):
    /// a chain runs once up to the deepest tap; so does an imported graph that can return several values (the built-in
    /// ones), else it runs once per tap.
    /// </summary>
    public Dictionary<string, Tensor> ForwardTaps(Tensor input, IReadOnlyCollection<string> taps)
    {
        ArgumentNullException.ThrowIfNull(taps);
        var indices = taps.Distinct().ToDictionary(t => t, ResolveTap);
        if (_graphTaps is not null)
        {
            Dictionary<int, Tensor> byStep = _graphTaps(input, [.. indices.Values.Distinct()]);
            try
            {
                return indices.ToDictionary(t => t.Key, t => byStep[t.Value].alias());
            }
            finally
            {
                foreach (Tensor value in byStep.Values)
                {
                    value.Dispose();
                }
            }
        }
        if (_graphTo is not null)
        {
            return indices.ToDictionary(t => t.Key, t => _graphTo(input, t.Value));
        }
        return RunChainTaps(input, _steps.Select(s => (s.Name, s.Run)).ToList(), indices);
    }

    /// <summary>Runs the steps after <paramref name="tap"/> on that tap's activations.</summary>
    /// <remarks> The first step may be an in-place ReLU (torchvision's VGG and AlexNet use them): it runs on a copy, so
    /// cached activations passed in are never changed. An imported graph is split at the tap's value and runs the nodes
    /// after it (none of its operators work in place).
    /// </remarks>
    public Tensor ForwardFrom(Tensor activations, string tap)
    {
        if (_graphFrom is not null)
        {
            return _graphFrom(activations, ResolveTap(tap));
        }
        using Tensor copy = activations.clone();
        return Run(copy, ResolveTap(tap) + 1, _steps.Count);
    }

    /// <summary>
    /// Checks the convolutions this backbone runs for <paramref name="plan"/> (its own forward pass, to the plan's tap,
    /// on input laid out by <paramref name="prepareInput"/>; for training, <see cref="KernelPlan.Pass"/> Backward checks
    /// the gradients too) and from then on routes them by the verdicts. Weights must already be in the type, layout
    /// and on the device they will run with.
    /// </summary>
    public void CheckKernels(KernelVerifier verifier, KernelPlan plan, Func<Tensor, Tensor>? prepareInput = null)
    {
        ArgumentNullException.ThrowIfNull(plan);
        string tap = plan.Tap ?? _steps[^1].Name;
        TorchSharp.Modules.Parameter? first = parameters().FirstOrDefault();
        // The trace runs in eval mode: in train mode every batch norm on the way would fold the zero image's statistics
        // into its running ones (seen as a training run that no longer matched PyTorch's).
        bool wasTraining = training;
        eval();
        IReadOnlyList<ConvolutionSite> sites;
        try
        {
            sites = ModelKernelCheck.Trace(Router, () =>
            {
                using Tensor image = zeros(1, 3, plan.InputSize, plan.InputSize, dtype: first?.dtype ?? ScalarType.Float32, device: first?.device ?? CPU);
                using Tensor input = prepareInput is null ? image.alias() : prepareInput(image);
                ForwardTo(input, tap).Dispose();
            });
        }
        finally
        {
            train(wasTraining);
        }
        ModelKernelCheck.Install(Router, verifier, sites, plan);
    }

    /// <summary>The index of the step a tap name or alias designates; unknown names list the closest valid ones.</summary>
    public int ResolveTap(string tap)
    {
        if (_stepIndex.TryGetValue(tap, out int index))
        {
            return index;
        }
        if (_aliases.TryGetValue(tap, out string? step))
        {
            return _stepIndex[step];
        }
        throw new UnknownNameException("layer", tap, $"architecture '{GetName()}'", TapNames);
    }

    /// <summary>Parameters of the steps up to and including the tap: what a cutoff there freezes.</summary>
    public long ParametersUpTo(string tap)
    {
        int last = ResolveTap(tap);
        return _steps.Take(last + 1).Sum(s => s.ParameterCount);
    }

    public static long CountParameters(nn.Module module) => module.parameters().Sum(p => p.numel());

    /// <summary>
    /// Runs one zero image of <paramref name="inputSize"/> through every step (eval mode, no gradients) and
    /// returns each step's output shape per image, e.g. [512, 7, 7]. Convolutions are traced, not computed: shapes
    /// never depend on a kernel nobody has checked.
    /// </summary>
    public IReadOnlyList<(BackboneStep Step, long[] Shape)> TraceShapes(int inputSize)
    {
        bool wasTraining = training;
        eval();
        try
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            using ConvolutionTrace trace = Router.BeginTrace();
            var shapes = new List<(BackboneStep, long[])>(_steps.Count);
            Tensor image = zeros(1, 3, inputSize, inputSize);
            Tensor x = image;
            for (int i = 0; i < _steps.Count; i++)
            {
                x = _graphTo is null ? _steps[i].Run(x) : _graphTo(image, i);
                shapes.Add((_steps[i], x.shape[1..]));
            }
            return shapes;
        }
        finally
        {
            train(wasTraining);
        }
    }

    /// <summary>
    /// Runs <paramref name="steps"/> up to the deepest of <paramref name="taps"/> (tap → step index), copying the
    /// activations at each tap as it passes: the step after may work in place (VGG's ReLUs).
    /// </summary>
    internal static Dictionary<string, Tensor> RunChainTaps(Tensor input, IReadOnlyList<(string Name, Func<Tensor, Tensor> Run)> steps, IReadOnlyDictionary<string, int> taps)
    {
        var results = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        if (taps.Count == 0)
        {
            return results;
        }
        int last = taps.Values.Max();
        Tensor x = input;
        try
        {
            for (int i = 0; i <= last; i++)
            {
                Tensor next = steps[i].Run(x);
                if (!ReferenceEquals(x, input) && !ReferenceEquals(x, next))
                {
                    x.Dispose();
                }
                x = next;
                foreach ((string tap, int index) in taps)
                {
                    if (index == i)
                    {
                        results[tap] = x.clone();
                    }
                }
            }
        }
        finally
        {
            if (!ReferenceEquals(x, input))
            {
                x.Dispose();
            }
        }
        return results;
    }

    private Tensor Run(Tensor input, int from, int to) => RunChain(input, _steps.Skip(from).Take(to - from).Select(s => s.Run));

    /// <summary>
    /// Runs <paramref name="steps"/> one after another on <paramref name="input"/>. Intermediate activations die as
    /// soon as the next step has them; the caller owns input and result (an alias of the input when no step ran).
    /// </summary>
    internal static Tensor RunChain(Tensor input, IEnumerable<Func<Tensor, Tensor>> steps)
    {
        Tensor x = input;
        foreach (Func<Tensor, Tensor> step in steps)
        {
            Tensor next = step(x);
            if (!ReferenceEquals(x, input) && !ReferenceEquals(x, next))
            {
                x.Dispose();
            }
            x = next;
        }
        return ReferenceEquals(x, input) ? x.alias() : x;
    }
}
