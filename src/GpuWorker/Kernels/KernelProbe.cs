using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Serialization;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Cluster.GpuWorker.Kernels;

/// <summary>How a path fared on a configuration.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<ProbeOutcome>))]
public enum ProbeOutcome
{
    /// <summary>Agrees with the float64 reference within the precision of its type.</summary>
    Passed,

    /// <summary>Ran, and disagrees with the reference (or produced NaN or infinity).</summary>
    Wrong,

    /// <summary>Killed the process that ran it (SIGFPE, SIGSEGV, ...) or never finished.</summary>
    Crashed,

    /// <summary>Refused by libtorch (an operator that has no kernel for this type or device).</summary>
    Unsupported,
}

/// <summary>A verdict on one path for one configuration.</summary>
/// <param name="Error">The largest difference from the reference, relative to the reference's largest magnitude.</param>
/// <param name="Milliseconds">The time of one call at the configuration's batch size (forward, plus backward when checked).</param>
public sealed record ProbeVerdict(ProbeOutcome Outcome, double Error, double Milliseconds, string? Message = null)
{
    public bool Passed => Outcome == ProbeOutcome.Passed;
}

/// <summary>How an injected fault breaks a kernel.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<FaultKind>))]
public enum FaultKind
{
    /// <summary>The result (or the weight gradient) is off by a tenth of its largest value.</summary>
    Wrong,

    /// <summary>The probe process dies by SIGFPE, as oneDNN's 1×1 blocking did on Zen 5.</summary>
    Crash,

    /// <summary>The kernel never returns.</summary>
    Hang,
}

/// <summary>A deliberately broken kernel, for tests of the check itself (never set in production).</summary>
/// <param name="Path">The path to break.</param>
/// <param name="Match">A substring of <see cref="ConvolutionConfig.Key"/> that selects the configurations to break ("" for all).</param>
public sealed record InjectedFault(ConvolutionPath Path, string Match, FaultKind Kind);

/// <summary>
/// Runs one path on one configuration with random data and compares it with the same convolution computed in float64
/// in NCHW by libtorch's reference kernels (no oneDNN: float64 has none), from the very values the path saw (inputs
/// and weights rounded to the type first). The path runs at the configuration's full batch, because kernel libraries
/// block their work by batch size; the reference is computed for the first and the last image (where blocking tails
/// land), which keeps it cheap. The backward check runs the same path under autograd, checks its output as well, and
/// gives an output gradient that is non-zero on those two images only, so the weight gradient the kernel computes at
/// full batch has an exact two-image reference. Every call of <see cref="ForwardCalls"/> / <see cref="BackwardCalls"/>
/// must pass. Runs in the process that calls it: a kernel that crashes takes it down (<see cref="KernelVerifier"/>
/// calls this in a child process, with a poisoned heap: <see cref="Devices.NativeHeap.PoisonNewBlocks"/>).
/// </summary>
public static partial class KernelProbe
{
    /// <summary>Changes whenever what a probe checks changes, so that verdicts of an older probe are not reused.</summary>
    public const int Version = 2;

    /// <summary>Relative error allowed: float32 kernels agree with float64 to ~1e-6 here; wrong ones are off by 10-50%.</summary>
    public static double ToleranceFor(ScalarType type) => type == ScalarType.Float32 || type == ScalarType.Float64 ? 1e-4 : 3e-2;

    public static ProbeVerdict Run(ConvolutionConfig config, ConvolutionPath path, IReadOnlyList<InjectedFault>? faults = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        InjectedFault? fault = faults?.FirstOrDefault(f => f.Path == path && config.Key.Contains(f.Match, StringComparison.Ordinal));
        if (fault?.Kind == FaultKind.Crash)
        {
            Crash();
        }
        if (fault?.Kind == FaultKind.Hang)
        {
            Thread.Sleep(Timeout.Infinite);
        }
        try
        {
            using var scope = NewDisposeScope();
            return config.Pass == KernelPass.Forward ? Forward(config, path, fault) : Backward(config, path, fault);
        }
        catch (Exception e) when (e is ExternalException or ArgumentException or NotSupportedException)
        {
            return new ProbeVerdict(ProbeOutcome.Unsupported, double.NaN, 0, e.Message.Split('\n')[0]);
        }
    }

    /// <summary>
    /// Calls per probe. Some faults come and go: on the Zen 5 machine libtorch's NCHW backward of a 1×7 convolution on
    /// two threads is wrong on some calls of a process and right on others. Every call must pass.
    /// </summary>
    public const int ForwardCalls = 2;

    /// <inheritdoc cref="ForwardCalls"/>
    public const int BackwardCalls = 3;

    private static ProbeVerdict Forward(ConvolutionConfig config, ConvolutionPath path, InjectedFault? fault)
    {
        using var noGrad = no_grad();
        (Tensor x, Tensor w, Tensor? b) = Operands(config, requiresGrad: false);
        Tensor rows = ReferenceRows(config.Batch, x.device);
        Tensor expected = ReferenceForward(config, x.index_select(0, rows), w, b);
        double error = 0, ms = double.PositiveInfinity;
        for (int call = 0; call < ForwardCalls; call++)
        {
            using var scope = NewDisposeScope();
            var clock = Stopwatch.StartNew();
            Tensor y = ConvolutionKernels.Run(path, x, w, b, config.Geometry);
            // The warm call's time: fallbacks compete on it (the fastest right one is taken).
            ms = clock.Elapsed.TotalMilliseconds;
            if (fault is not null)
            {
                y = Perturb(y);
            }
            error = Math.Max(error, RelativeError(y.index_select(0, rows), expected));
        }
        return Verdict(config, error, ms);
    }

    private static ProbeVerdict Backward(ConvolutionConfig config, ConvolutionPath path, InjectedFault? fault)
    {
        (Tensor x, Tensor w, Tensor? b) = Operands(config, requiresGrad: true);
        Tensor rows = ReferenceRows(config.Batch, x.device);
        (long height, long width) = config.Geometry.OutputSize(config.Height, config.Width);
        var generator = new Generator(SeedOf(config) ^ 0x5bd1e995UL);
        Tensor gradRows = randn([rows.shape[0], config.Geometry.OutChannels, height, width], generator: generator).to(config.DType, x.device);

        // The same two images and output gradients in float64, through the reference kernels.
        Tensor xr = x.detach().index_select(0, rows).to(float64).contiguous().requires_grad_(true);
        Tensor wr = w.detach().to(float64).contiguous().requires_grad_(true);
        Tensor? br = b?.detach().to(float64).requires_grad_(true);
        Tensor yr = ConvolutionKernels.Run(ConvolutionPath.Native, xr, wr, br, config.Geometry);
        yr.backward([gradRows.to(float64).contiguous()]);

        double error = 0, ms = double.PositiveInfinity;
        for (int call = 0; call < BackwardCalls; call++)
        {
            using var scope = NewDisposeScope();
            x.grad?.zero_();
            w.grad?.zero_();
            b?.grad?.zero_();
            var clock = Stopwatch.StartNew();
            Tensor y = ConvolutionKernels.Run(path, x, w, b, config.Geometry);
            // Non-zero only on the two reference images, so the kernel's full-batch weight gradient has an exact reference.
            Tensor grad = zeros_like(y);
            grad.index_copy_(0, rows, gradRows);
            grad = TensorLayouts.To(grad, TensorLayouts.Of(y));
            y.backward([grad]);
            ms = clock.Elapsed.TotalMilliseconds;
            Tensor gw = fault is null ? w.grad! : Perturb(w.grad!);
            // A training step needs all three right: the output (its forward kernel is not always the inference one) and both gradients.
            error = Math.Max(error, RelativeError(y.detach().index_select(0, rows), yr.detach()));
            error = Math.Max(error, Math.Max(RelativeError(x.grad!.index_select(0, rows), xr.grad!), RelativeError(gw, wr.grad!)));
            if (b is not null)
            {
                error = Math.Max(error, RelativeError(b.grad!, br!.grad!));
            }
        }
        return Verdict(config, error, ms);
    }

    private static ProbeVerdict Verdict(ConvolutionConfig config, double error, double ms) =>
        new(error <= ToleranceFor(config.DType) ? ProbeOutcome.Passed : ProbeOutcome.Wrong, error, ms);

    /// <summary>Input, weight and bias as the model would hold them: random, in the config's type, layouts and device.</summary>
    private static (Tensor X, Tensor W, Tensor? B) Operands(ConvolutionConfig config, bool requiresGrad)
    {
        ConvolutionGeometry g = config.Geometry;
        var generator = new Generator(SeedOf(config));
        Device device = new(config.Device);
        long fanIn = g.InChannels / g.Groups * g.KernelHeight * g.KernelWidth;
        Tensor x = randn([config.Batch, g.InChannels, config.Height, config.Width], generator: generator);
        Tensor w = randn([g.OutChannels, g.InChannels / g.Groups, g.KernelHeight, g.KernelWidth], generator: generator) * Math.Sqrt(2.0 / fanIn);
        Tensor? b = g.HasBias ? randn([g.OutChannels], generator: generator) * 0.1 : null;
        x = TensorLayouts.To(x.to(config.DType, device), config.InputLayout);
        w = TensorLayouts.To(w.to(config.DType, device), config.WeightLayout);
        if (TensorLayouts.Of(x) != config.InputLayout || TensorLayouts.Of(w) != config.WeightLayout)
        {
            // A probe of another layout than the model's would vouch for a kernel the model never runs.
            throw new InvalidOperationException($"the probe could not lay out its operands as [{config.Key}] has them");
        }
        b = b?.to(config.DType, device);
        if (requiresGrad)
        {
            x.requires_grad_(true);
            w.requires_grad_(true);
            b?.requires_grad_(true);
        }
        return (x, w, b);
    }

    private static Tensor ReferenceForward(ConvolutionConfig config, Tensor x, Tensor w, Tensor? b) =>
        ConvolutionKernels.Run(ConvolutionPath.Native, x.to(float64).contiguous(), w.to(float64).contiguous(), b?.to(float64), config.Geometry);

    /// <summary>The first and the last image of the batch.</summary>
    private static Tensor ReferenceRows(long batch, Device device) =>
        (batch > 1 ? tensor(new long[] { 0, batch - 1 }) : tensor(new long[] { 0 })).to(device);

    private static double RelativeError(Tensor actual, Tensor expected)
    {
        using Tensor a = actual.detach().to(float64).cpu();
        using Tensor e = expected.detach().to(float64).cpu();
        double scale = e.abs().max().item<double>();
        double difference = (a - e).abs().max().item<double>();
        if (double.IsNaN(difference) || double.IsInfinity(difference))
        {
            return double.PositiveInfinity;
        }
        return difference / Math.Max(scale, 1e-30);
    }

    private static Tensor Perturb(Tensor t)
    {
        using Tensor scale = t.detach().abs().max();
        return t.detach() + scale * 0.1;
    }

    private static ulong SeedOf(ConvolutionConfig config) =>
        BitConverter.ToUInt64(SHA256.HashData(Encoding.UTF8.GetBytes(config.Key)), 0) & 0x7fff_ffff_ffff_ffffUL;

    [LibraryImport("libc", EntryPoint = "raise")]
    private static partial int Raise(int signal);

    private static void Crash()
    {
        const int sigfpe = 8;
        Raise(sigfpe);
        // raise() returns only if the signal was handled; make sure the process still ends as a crash would.
        Environment.FailFast("injected kernel crash");
    }
}
