using System.Globalization;
using System.Text.Json.Serialization;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Kernels;

/// <summary>What a kernel check covers: the forward pass alone, or forward and both gradients (training).</summary>
[JsonConverter(typeof(JsonStringEnumConverter<KernelPass>))]
public enum KernelPass
{
    Forward,
    Backward,
}

/// <summary>
/// One convolution as a kernel library sees it: geometry, batch and spatial size, element type, the layouts of input
/// and weight, device and intra-op thread count, and which passes run. oneDNN picks its algorithm and blocking from
/// all of these (on one Zen 5 CPU a 1×1 128→512 convolution at 28×28 is right at batch 8 and wrong at batch 32, right
/// on one thread and wrong on two), so a verdict holds for exactly one configuration.
/// </summary>
public sealed record ConvolutionConfig(
    ConvolutionGeometry Geometry,
    long Batch,
    long Height,
    long Width,
    [property: JsonConverter(typeof(JsonStringEnumConverter<ScalarType>))] ScalarType DType,
    [property: JsonConverter(typeof(JsonStringEnumConverter<TensorLayout>))] TensorLayout InputLayout,
    [property: JsonConverter(typeof(JsonStringEnumConverter<TensorLayout>))] TensorLayout WeightLayout,
    string Device,
    int Threads,
    KernelPass Pass)
{
    /// <summary>A stable, readable identity: the key of its verdicts on disk.</summary>
    public string Key => string.Create(CultureInfo.InvariantCulture,
        $"{Pass.ToString().ToLowerInvariant()} {DTypeName(DType)} {Device} t{Threads} n{Batch} {Geometry.InChannels}x{Height}x{Width} in:{LayoutName(InputLayout)} w:{LayoutName(WeightLayout)} {Geometry}");

    public override string ToString() => Key;

    public static string DTypeName(ScalarType type) => type switch
    {
        ScalarType.Float32 => "fp32",
        ScalarType.BFloat16 => "bf16",
        ScalarType.Float16 => "fp16",
        ScalarType.Float64 => "fp64",
        _ => type.ToString(),
    };

    private static string LayoutName(TensorLayout layout) => layout == TensorLayout.ChannelsLast ? "cl" : "nchw";
}

/// <summary>Where a model runs a convolution, independent of batch size and threads: what a trace of the model finds.</summary>
public sealed record ConvolutionSite(
    ConvolutionGeometry Geometry,
    long Height,
    long Width,
    ScalarType DType,
    TensorLayout InputLayout,
    TensorLayout WeightLayout,
    string Device)
{
    public ConvolutionConfig At(long batch, int threads, KernelPass pass) =>
        new(Geometry, batch, Height, Width, DType, InputLayout, WeightLayout, Device, threads, pass);
}
