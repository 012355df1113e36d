using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Models;

/// <summary>
/// A backbone prepared to compute features: eval mode, weights on the device in the compute precision (bf16 with
/// channels-last strides), and for ResNets the batch norms folded into the convolutions (<see cref="FoldedResNet"/>).
/// Extraction and `coordinator models bench` run the same thing. Owns the backbone.
/// </summary>
public sealed class InferenceModel : IDisposable
{
    private InferenceModel(Backbone backbone, FoldedResNet? folded, ScalarType computeType, bool channelsLast)
    {
        Backbone = backbone;
        Folded = folded;
        ComputeType = computeType;
        IsChannelsLast = channelsLast;
    }

    public Backbone Backbone { get; }

    /// <summary>The folded forward pass, or null where the architecture has none (then the backbone runs as built).</summary>
    public FoldedResNet? Folded { get; }

    public ScalarType ComputeType { get; }

    /// <summary>Whether weights and inputs have channels-last strides (see <see cref="Prepare"/>).</summary>
    public bool IsChannelsLast { get; }

    /// <summary>
    /// Prepares <paramref name="backbone"/> (float32, weights loaded) for <paramref name="precision"/> ("fp32" or
    /// "bf16") on <paramref name="device"/>; <paramref name="fold"/> false keeps the batch norms as they are.
    /// </summary>
    public static InferenceModel Prepare(Backbone backbone, string precision, Device device, bool fold = true)
    {
        ArgumentNullException.ThrowIfNull(backbone);
        ScalarType type = ComputeTypeOf(precision);
        // Channels-last on every CPU run (oneDNN's NHWC kernels: bf16 twice the rate, fp32 measured +10-17% on the
        // build machine, same float32 arithmetic in another order) and for bf16 on a GPU.
        bool channelsLast = type == ScalarType.BFloat16 || device.type == DeviceType.CPU;
        backbone.eval();
        // Folded from the float32 weights, before the backbone itself is converted.
        FoldedResNet? folded = fold ? FoldedResNet.TryCreate(backbone, type, device, channelsLast) : null;
        backbone.to(device);
        if (type != ScalarType.Float32)
        {
            backbone.to(type);
        }
        if (channelsLast)
        {
            ToChannelsLast(backbone);
        }
        return new InferenceModel(backbone, folded, type, channelsLast);
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
    public static Tensor ChannelsLast(Tensor batch) => batch.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2);

    public void Dispose()
    {
        Folded?.Dispose();
        Backbone.Dispose();
    }
}
