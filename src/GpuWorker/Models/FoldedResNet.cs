using Cluster.GpuWorker.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Models;

/// <summary>
/// A ResNet's forward pass for inference with every batch norm folded into the convolution before it: in eval mode
/// a batch norm is a fixed per-channel scale and shift, so conv(x, W) then BN equals conv(x, W·s) + (β − μ·s) with
/// s = γ / √(σ² + ε). That removes twenty (ResNet-18) to a hundred and fifty (ResNet-152) passes over the
/// activations, each of which reads and writes a whole feature map; the convolutions are unchanged. TensorRT, ONNX
/// Runtime and OpenVINO do the same at load time.
/// </summary>
/// <remarks>
/// Folded from the float32 weights, then converted to the compute type, so bf16 rounds the folded weights once
/// rather than the batch norm's statistics and its output separately. It covers the taps from `bn1` to `avgpool`;
/// `conv1` (before its batch norm) and the classifier run the backbone itself. Built from a backbone in eval mode
/// and valid while its weights do not change (extraction and prediction, never training).
/// </remarks>
public sealed class FoldedResNet : IDisposable
{
    // torchvision's ResNets use BatchNorm2d's default epsilon throughout.
    private const double BatchNormEpsilon = 1e-5;

    private readonly List<(string Tap, Func<Tensor, Tensor> Run)> _steps = [];
    private readonly Dictionary<string, int> _index = new(StringComparer.Ordinal);
    private readonly List<Tensor> _weights = [];

    private FoldedResNet()
    {
    }

    /// <summary>
    /// The folded forward pass of <paramref name="model"/> (a torchvision-layout ResNet in float32, eval mode), with
    /// weights in <paramref name="type"/> on <paramref name="device"/>, channels-last when
    /// <paramref name="channelsLast"/>; null when the model is not such a ResNet (imported graphs, other families).
    /// </summary>
    public static FoldedResNet? TryCreate(Backbone model, ScalarType type, Device device, bool channelsLast)
    {
        ArgumentNullException.ThrowIfNull(model);
        Dictionary<string, Tensor> state = model.state_dict();
        if (!state.ContainsKey("conv1.weight") || !state.ContainsKey("bn1.running_var") || !state.ContainsKey("layer1.0.conv1.weight")
            || state["conv1.weight"].dtype != ScalarType.Float32)
        {
            return null;
        }
        var folded = new FoldedResNet();
        try
        {
            using var noGrad = no_grad();
            ConvolutionRouter router = model.Router;
            (Tensor w, Tensor b) stem = folded.Fold(state, "conv1", "bn1", type, device, channelsLast);
            ConvolutionGeometry stemGeometry = GeometryOf(stem.w, 2, 3);
            folded.Add("bn1", x => router.Conv2d(x, stem.w, stem.b, stemGeometry));
            folded.Add("relu", RectifyInPlace);
            folded.Add("maxpool", MaxPool);
            for (int stage = 1; stage <= 4; stage++)
            {
                for (int block = 0; state.ContainsKey($"layer{stage}.{block}.conv1.weight"); block++)
                {
                    string prefix = $"layer{stage}.{block}";
                    // torchvision: the first block of stages 2 to 4 halves the resolution, in its 3×3 convolution
                    // (conv1 of a basic block, conv2 of a bottleneck) and in its 1×1 downsampling shortcut.
                    long stride = stage > 1 && block == 0 ? 2 : 1;
                    bool bottleneck = state.ContainsKey($"{prefix}.conv3.weight");
                    var convs = new List<FoldedConvolution>();
                    for (int i = 1; i <= (bottleneck ? 3 : 2); i++)
                    {
                        (Tensor w, Tensor b) = folded.Fold(state, $"{prefix}.conv{i}", $"{prefix}.bn{i}", type, device, channelsLast);
                        bool strided = bottleneck ? i == 2 : i == 1;
                        convs.Add(new FoldedConvolution(w, b, GeometryOf(w, strided ? stride : 1, w.shape[2] / 2)));
                    }
                    FoldedConvolution? shortcut = null;
                    if (state.ContainsKey($"{prefix}.downsample.0.weight"))
                    {
                        (Tensor w, Tensor b) = folded.Fold(state, $"{prefix}.downsample.0", $"{prefix}.downsample.1", type, device, channelsLast);
                        shortcut = new FoldedConvolution(w, b, GeometryOf(w, stride, 0));
                    }
                    folded.Add(prefix, x => Block(router, x, convs, shortcut));
                }
            }
            folded.Add("avgpool", x =>
            {
                using Tensor pooled = nn.functional.adaptive_avg_pool2d(x, [1, 1]);
                return pooled.flatten(1);
            });
            return folded;
        }
        catch
        {
            folded.Dispose();
            throw;
        }
    }

    /// <summary>The last step it covers (the global pool).</summary>
    public string LastStep => _steps[^1].Tap;

    /// <summary>The steps it runs, in order (`bn1` is the stem convolution with its batch norm folded in).</summary>
    public IReadOnlyList<string> Steps => [.. _steps.Select(s => s.Tap)];

    /// <summary>Runs the one covered step <paramref name="step"/> on the output of the step before it (the image for `bn1`).</summary>
    public Tensor ForwardStep(Tensor input, string step) =>
        _index.TryGetValue(step, out int i) ? Backbone.RunChain(input, [_steps[i].Run]) : throw new ArgumentException($"the folded ResNet does not cover step '{step}'", nameof(step));

    /// <summary>Whether <see cref="ForwardTo"/> runs to this step (a step name, not an alias).</summary>
    public bool Covers(string step) => _index.ContainsKey(step);

    /// <summary>Runs the folded steps from the image up to and including <paramref name="step"/>.</summary>
    public Tensor ForwardTo(Tensor input, string step)
    {
        int last = _index.TryGetValue(step, out int i) ? i : throw new ArgumentException($"the folded ResNet does not cover step '{step}'", nameof(step));
        return Backbone.RunChain(input, _steps.Take(last + 1).Select(s => s.Run));
    }

    /// <summary>The activations at several covered steps from one pass (copies the caller owns).</summary>
    public Dictionary<string, Tensor> ForwardTaps(Tensor input, IReadOnlyCollection<string> steps) =>
        Backbone.RunChainTaps(input, _steps.Select(s => (s.Tap, s.Run)).ToList(), steps.Distinct().ToDictionary(
            s => s, s => _index.TryGetValue(s, out int i) ? i : throw new ArgumentException($"the folded ResNet does not cover step '{s}'", nameof(steps))));

    private static Tensor MaxPool(Tensor x) => nn.functional.max_pool2d(x, kernel_size: 3, stride: 2, padding: 1);

    /// <summary>ReLU in place on an activation this chain owns (never the caller's input): no new feature map.</summary>
    private static Tensor RectifyInPlace(Tensor x)
    {
        Tensor result = x.relu_();
        if (!ReferenceEquals(result, x))
        {
            // Some TorchSharp versions return a second handle to the same tensor.
            result.Dispose();
        }
        return x;
    }

    public void Dispose()
    {
        foreach (Tensor weight in _weights)
        {
            weight.Dispose();
        }
        _weights.Clear();
    }

    /// <summary>A convolution with its batch norm folded in: weight, bias (never null after folding) and geometry.</summary>
    private sealed record FoldedConvolution(Tensor Weight, Tensor Bias, ConvolutionGeometry Geometry);

    private static ConvolutionGeometry GeometryOf(Tensor weight, long stride, long padding) =>
        new(weight.shape[1], weight.shape[0], weight.shape[2], weight.shape[3], stride, stride, padding, padding, 1, 1, 1, HasBias: true);

    private static Tensor Block(ConvolutionRouter router, Tensor x, List<FoldedConvolution> convs, FoldedConvolution? shortcut)
    {
        Tensor y = x;
        for (int i = 0; i < convs.Count; i++)
        {
            FoldedConvolution conv = convs[i];
            Tensor next = router.Conv2d(y, conv.Weight, conv.Bias, conv.Geometry);
            if (!ReferenceEquals(y, x))
            {
                y.Dispose();
            }
            y = next;
            if (i < convs.Count - 1)
            {
                RectifyInPlace(y);
            }
        }
        if (shortcut is not null)
        {
            using Tensor identity = router.Conv2d(x, shortcut.Weight, shortcut.Bias, shortcut.Geometry);
            y.add_(identity);
        }
        else
        {
            y.add_(x);
        }
        return RectifyInPlace(y);
    }

    private void Add(string tap, Func<Tensor, Tensor> run)
    {
        _index[tap] = _steps.Count;
        _steps.Add((tap, run));
    }

    /// <summary>The convolution <paramref name="conv"/> with the batch norm <paramref name="bn"/> after it folded in.</summary>
    private (Tensor Weight, Tensor Bias) Fold(Dictionary<string, Tensor> state, string conv, string bn, ScalarType type, Device device, bool channelsLast)
    {
        // Every intermediate dies with this scope; the two results are detached from it and owned by this object.
        using var scope = NewDisposeScope();
        Tensor scale = state[$"{bn}.weight"] / (state[$"{bn}.running_var"] + BatchNormEpsilon).sqrt();
        Tensor weight = (state[$"{conv}.weight"] * scale.reshape(-1, 1, 1, 1)).to(type, device);
        Tensor bias = state[$"{bn}.bias"] - state[$"{bn}.running_mean"] * scale;
        if (state.TryGetValue($"{conv}.bias", out Tensor? convBias))
        {
            bias = bias + convBias * scale;
        }
        weight = channelsLast ? InferenceModel.ChannelsLast(weight) : weight.contiguous();
        bias = bias.to(type, device);
        weight.DetachFromDisposeScope();
        bias.DetachFromDisposeScope();
        _weights.Add(weight);
        _weights.Add(bias);
        return (weight, bias);
    }
}
