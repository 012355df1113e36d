using System.Collections.Concurrent;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Kernels;

/// <summary>
/// Every convolution of one model goes through its router, which decides per configuration which
/// <see cref="ConvolutionPath"/> computes it. A fresh model trusts libtorch (<see cref="Unchecked"/>); a prepared one
/// runs only verified paths (<see cref="Use"/>); a trace records where the model convolves without running a single
/// convolution kernel (<see cref="BeginTrace"/>), which is how a model's configurations are found before any of them
/// is trusted.
/// </summary>
public sealed class ConvolutionRouter
{
    private volatile RoutingMode _mode = UncheckedMode.Instance;

    /// <summary>Whether this router still runs libtorch's kernels unchecked (no verified routes installed).</summary>
    public bool Unchecked => _mode is UncheckedMode;

    /// <summary>The verified routes in force, or null.</summary>
    public ConvolutionRoutes? Routes => (_mode as VerifiedMode)?.Routes;

    public Tensor Conv2d(Tensor input, Tensor weight, Tensor? bias, in ConvolutionGeometry geometry) =>
        _mode.Conv2d(input, weight, bias, geometry);

    /// <summary>From now on every convolution runs the path <paramref name="routes"/> verified for its configuration.</summary>
    public void Use(ConvolutionRoutes routes)
    {
        ArgumentNullException.ThrowIfNull(routes);
        _mode = new VerifiedMode(routes);
    }

    /// <summary>
    /// Until the trace is disposed, convolutions return zeros of the right shape, type and layout and record where
    /// they ran; nothing else of the model changes. Traces are for model preparation: not while batches run.
    /// </summary>
    public ConvolutionTrace BeginTrace()
    {
        var trace = new ConvolutionTrace(this, _mode);
        _mode = new RecordingMode(trace);
        return trace;
    }

    internal void Restore(RoutingMode mode) => _mode = mode;

    /// <summary>The configuration a call with these tensors runs, on the calling thread.</summary>
    public static ConvolutionConfig ConfigOf(Tensor input, Tensor weight, in ConvolutionGeometry geometry)
    {
        bool training = is_grad_enabled() && (input.requires_grad || weight.requires_grad);
        return new ConvolutionConfig(geometry, input.shape[0], input.shape[2], input.shape[3], input.dtype,
            TensorLayouts.Of(input), TensorLayouts.Of(weight), input.device.ToString(), get_num_threads(),
            training ? KernelPass.Backward : KernelPass.Forward);
    }

    internal abstract class RoutingMode
    {
        public abstract Tensor Conv2d(Tensor input, Tensor weight, Tensor? bias, in ConvolutionGeometry geometry);
    }

    private sealed class UncheckedMode : RoutingMode
    {
        public static readonly UncheckedMode Instance = new();

        public override Tensor Conv2d(Tensor input, Tensor weight, Tensor? bias, in ConvolutionGeometry geometry) =>
            ConvolutionKernels.Run(ConvolutionPath.Native, input, weight, bias, geometry);
    }

    private sealed class VerifiedMode(ConvolutionRoutes routes) : RoutingMode
    {
        public ConvolutionRoutes Routes { get; } = routes;

        public override Tensor Conv2d(Tensor input, Tensor weight, Tensor? bias, in ConvolutionGeometry geometry) =>
            ConvolutionKernels.Run(Routes.PathFor(ConfigOf(input, weight, geometry)), input, weight, bias, geometry);
    }

    private sealed class RecordingMode(ConvolutionTrace trace) : RoutingMode
    {
        public override Tensor Conv2d(Tensor input, Tensor weight, Tensor? bias, in ConvolutionGeometry geometry)
        {
            TensorLayout inputLayout = TensorLayouts.Of(input), weightLayout = TensorLayouts.Of(weight);
            trace.Add(new ConvolutionSite(geometry, input.shape[2], input.shape[3], input.dtype, inputLayout, weightLayout, input.device.ToString()));
            (long height, long width) = geometry.OutputSize(input.shape[2], input.shape[3]);
            using Tensor zeros = torch.zeros([input.shape[0], geometry.OutChannels, height, width], dtype: input.dtype, device: input.device);
            return TensorLayouts.To(zeros, ConvolutionKernels.OutputLayout(inputLayout, weightLayout));
        }
    }
}


/// <summary>The convolution sites a trace found, in the order the model first reached them.</summary>
public sealed class ConvolutionTrace : IDisposable
{
    private readonly ConvolutionRouter _router;
    private readonly ConvolutionRouter.RoutingMode _previous;
    private readonly List<ConvolutionSite> _sites = [];
    private readonly HashSet<ConvolutionSite> _seen = [];
    private bool _disposed;

    internal ConvolutionTrace(ConvolutionRouter router, ConvolutionRouter.RoutingMode previous)
    {
        _router = router;
        _previous = previous;
    }

    public IReadOnlyList<ConvolutionSite> Sites
    {
        get
        {
            lock (_sites)
            {
                return _sites.ToList();
            }
        }
    }

    internal void Add(ConvolutionSite site)
    {
        lock (_sites)
        {
            if (_seen.Add(site))
            {
                _sites.Add(site);
            }
        }
    }

    public void Dispose()
    {
        if (!_disposed)
        {
            _disposed = true;
            _router.Restore(_previous);
        }
    }
}

/// <summary>
/// The verified path of every configuration a model has met, shared by its convolutions. A configuration not met
/// before (a batch size the plan did not foresee) is verified when it first runs, through the resolver, and its
/// verdict is kept.
/// </summary>
public sealed class ConvolutionRoutes(Func<ConvolutionConfig, ConvolutionPath> resolveUnseen)
{
    private readonly ConcurrentDictionary<ConvolutionConfig, ConvolutionPath> _paths = new();

    public IReadOnlyDictionary<ConvolutionConfig, ConvolutionPath> Paths => _paths;

    public ConvolutionPath PathFor(ConvolutionConfig config) =>
        _paths.TryGetValue(config, out ConvolutionPath path) ? path : _paths.GetOrAdd(config, resolveUnseen);

    public void Add(IReadOnlyDictionary<ConvolutionConfig, ConvolutionPath> paths)
    {
        foreach ((ConvolutionConfig config, ConvolutionPath path) in paths)
        {
            _paths[config] = path;
        }
    }
}
