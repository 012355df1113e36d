using Cluster.GpuWorker.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Models;

/// <summary>
/// A backbone prepared to compute features: eval mode, weights on the device in the compute precision (bf16 with
/// channels-last strides), for ResNets the batch norms folded into the convolutions (<see cref="FoldedResNet"/>), and
/// every convolution configuration it will run checked against a float64 reference before it is trusted
/// (<see cref="KernelVerifier"/>): a configuration whose libtorch kernel is wrong or crashes on this CPU runs a
/// verified path instead. Extraction, prediction and `coordinator models bench` run the same thing. Owns the backbone.
/// </summary>
public sealed class InferenceModel : IDisposable
{
    private readonly KernelVerifier _verifier;
    private readonly Dictionary<(int InputSize, string Step), IReadOnlyList<ConvolutionSite>> _sites = [];

    private InferenceModel(Backbone backbone, FoldedResNet? folded, ScalarType computeType, bool channelsLast, KernelVerifier verifier)
    {
        Backbone = backbone;
        Folded = folded;
        ComputeType = computeType;
        IsChannelsLast = channelsLast;
        _verifier = verifier;
    }

    /// <summary>Where the prepared model convolves on the way to the taps checked so far, whatever the batch size.</summary>
    public IReadOnlyList<ConvolutionSite> ConvolutionSites
    {
        get
        {
            lock (_sites)
            {
                return _sites.Values.SelectMany(s => s).Distinct().ToList();
            }
        }
    }

    /// <summary>The verified path of every configuration checked so far.</summary>
    public IReadOnlyDictionary<ConvolutionConfig, ConvolutionPath> Routes =>
        Backbone.Router.Routes?.Paths ?? new Dictionary<ConvolutionConfig, ConvolutionPath>();

    /// <summary>
    /// Checks, now, every convolution <paramref name="plan"/> will run (its tap, batch sizes and threads), rather than
    /// when each first runs; what was checked before costs nothing. The sites come from one zero image through exactly
    /// what <see cref="ForwardTo"/> runs (folded or not), with the convolutions traced rather than computed.
    /// </summary>
    public void EnsureVerified(KernelPlan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        string step = Backbone.Steps[plan.Tap is null ? Backbone.Steps.Count - 1 : Backbone.ResolveTap(plan.Tap)].Name;
        IReadOnlyList<ConvolutionSite> sites;
        lock (_sites)
        {
            if (!_sites.TryGetValue((plan.InputSize, step), out sites!))
            {
                sites = ModelKernelCheck.Trace(Backbone.Router, () =>
                {
                    Device device = Backbone.parameters().FirstOrDefault()?.device ?? CPU;
                    using Tensor image = zeros(1, 3, plan.InputSize, plan.InputSize, device: device);
                    using Tensor input = PrepareInput(image);
                    ForwardTo(input, step).Dispose();
                });
                _sites[(plan.InputSize, step)] = sites;
            }
        }
        ModelKernelCheck.Install(Backbone.Router, _verifier, sites, plan with { Pass = KernelPass.Forward });
    }
    public Backbone Backbone { get; }

    /// <summary>The folded forward pass, or null where the architecture has none (then the backbone runs as built).</summary>
    public FoldedResNet? Folded { get; }

    public ScalarType ComputeType { get; }

    /// <summary>Whether weights and inputs have channels-last strides (see <see cref="Prepare"/>).</summary>
    public bool IsChannelsLast { get; }

    /// <summary>
    /// Prepares <paramref name="backbone"/> (float32, weights loaded) for <paramref name="precision"/> ("fp32" or
    /// "bf16") on <paramref name="device"/>, its convolutions checked by <paramref name="verifier"/> for
    /// <paramref name="plan"/>; <paramref name="fold"/> false keeps the batch norms as they are. Takes ownership of the
    /// backbone, and disposes it if preparation fails.
    /// </summary>
    public static InferenceModel Prepare(Backbone backbone, string precision, Device device, KernelVerifier verifier, KernelPlan plan, bool fold = true)
    {
        ArgumentNullException.ThrowIfNull(backbone);
        ArgumentNullException.ThrowIfNull(verifier);
        ArgumentNullException.ThrowIfNull(plan);
        ScalarType type = ComputeTypeOf(precision);
        // Channels-last on every CPU run (oneDNN's NHWC kernels: bf16 twice the rate, fp32 measured +10-17% on the
        // build machine, same float32 arithmetic in another order) and for bf16 on a GPU.
        bool channelsLast = type == ScalarType.BFloat16 || device.type == DeviceType.CPU;
        FoldedResNet? folded = null;
        try
        {
            backbone.eval();
            // Folded from the float32 weights, before the backbone itself is converted.
            folded = fold ? FoldedResNet.TryCreate(backbone, type, device, channelsLast) : null;
            backbone.to(device);
            if (type != ScalarType.Float32)
            {
                backbone.to(type);
            }
            if (channelsLast)
            {
                ToChannelsLast(backbone);
            }
            var model = new InferenceModel(backbone, folded, type, channelsLast, verifier);
            model.EnsureVerified(plan);
            return model;
        }
        catch
        {
            folded?.Dispose();
            backbone.Dispose();
            throw;
        }
    }

    public static ScalarType ComputeTypeOf(string precision) => precision switch
    {
        "fp32" => ScalarType.Float32,
        "bf16" => ScalarType.BFloat16,
        _ => throw new ArgumentException($"precision '{precision}' is not one of: fp32, bf16", nameof(precision)),
    };

    /// <summary>
    /// Float32 images (N×3×H×W, on the model's device) in the compute type and layout the weights have; the
    /// caller's dispose scope owns the result.
    /// </summary>
    public Tensor PrepareInput(Tensor images)
    {
        // Layout first, then type: the conversion keeps the strides, and permuting 4-byte floats is about four times
        // faster than permuting 2-byte bf16 values (15 ms against 4 ms for 32 images at 224 on one core).
        Tensor laidOut = IsChannelsLast ? ChannelsLast(images) : images;
        return laidOut.to(ComputeType);
    }

    /// <summary>Runs to <paramref name="tap"/> (a step name or alias): folded where it covers the tap, else the backbone.</summary>
    public Tensor ForwardTo(Tensor input, string tap)
    {
        string step = Backbone.Steps[Backbone.ResolveTap(tap)].Name;
        return Folded is not null && Folded.Covers(step) ? Folded.ForwardTo(input, step) : Backbone.ForwardTo(input, tap);
    }

    /// <summary>
    /// The steps <see cref="ForwardTo"/> runs to reach <paramref name="tap"/>, in order: the folded ones where the fold
    /// covers the tap (its first takes the image), else the backbone's. Each one's input is the output of the one
    /// before (<see cref="ForwardStep"/>). An imported graph has no separate steps: it lists the tap alone.
    /// </summary>
    public IReadOnlyList<string> StepsTo(string tap)
    {
        string step = Backbone.Steps[Backbone.ResolveTap(tap)].Name;
        if (Folded is not null && Folded.Covers(step))
        {
            return [.. Folded.Steps.TakeWhile(s => s != step), step];
        }
        if (Backbone.IsImportedGraph)
        {
            return [step];
        }
        return [.. Backbone.Steps.Select(s => s.Name).TakeWhile(s => s != step), step];
    }

    /// <summary>Runs one step of <see cref="StepsTo"/> on the output of the step before it (the image for the first).</summary>
    public Tensor ForwardStep(Tensor input, string step)
    {
        if (Folded is not null && Folded.Covers(step))
        {
            return Folded.ForwardStep(input, step);
        }
        if (Backbone.IsImportedGraph)
        {
            return Backbone.ForwardTo(input, step);
        }
        return Backbone.RunChain(input, [Backbone.Steps[Backbone.ResolveTap(step)].Run]);
    }

    /// <summary>
    /// The activations at several taps (step names or aliases, keyed as asked), folded where the fold covers them, in
    /// one pass per path; each is a copy the caller owns.
    /// </summary>
    public Dictionary<string, Tensor> ForwardTaps(Tensor input, IReadOnlyCollection<string> taps)
    {
        ArgumentNullException.ThrowIfNull(taps);
        var steps = taps.Distinct().ToDictionary(t => t, t => Backbone.Steps[Backbone.ResolveTap(t)].Name);
        var folded = steps.Where(t => Folded is not null && Folded.Covers(t.Value)).ToList();
        var results = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        if (folded.Count > 0)
        {
            Dictionary<string, Tensor> byStep = Folded!.ForwardTaps(input, folded.Select(t => t.Value).Distinct().ToList());
            foreach ((string tap, string step) in folded)
            {
                results[tap] = byStep[step].alias();
            }
            foreach (Tensor t in byStep.Values)
            {
                t.Dispose();
            }
        }
        List<string> rest = steps.Keys.Where(t => !results.ContainsKey(t)).ToList();
        foreach ((string tap, Tensor value) in Backbone.ForwardTaps(input, rest))
        {
            results[tap] = value;
        }
        return results;
    }

    /// <summary>
    /// Gives every 4-D weight channels-last strides (NHWC in memory, NCHW in shape). TorchSharp has no
    /// memory_format API; with both weights and inputs in this layout oneDNN takes its NHWC path, which on
    /// CPUs with AMX/AVX-512 doubles the bf16 convolution rate (ENVIRONMENT.md).
    /// </summary>
    public static void ToChannelsLast(nn.Module model)
    {
        using var noGrad = no_grad();
        foreach (var (_, parameter) in model.named_parameters())
        {
            if (parameter.dim() == 4)
            {
                using Tensor nhwc = ChannelsLast(parameter);
                parameter.set_(nhwc);
            }
        }
    }

    /// <summary>A copy of a 4-D tensor (a batch or a convolution's weights) with channels-last strides.</summary>
    public static Tensor ChannelsLast(Tensor batch) => TensorLayouts.ToChannelsLast(batch);



    public void Dispose()
    {
        Folded?.Dispose();
        Backbone.Dispose();
    }
}
