using System.Diagnostics.CodeAnalysis;
using System.Security.Cryptography;
using Cluster.GpuWorker.Onnx;
using Onnx;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Models;

/// <summary>A named point in a network whose activations can be extracted or cached.</summary>
/// <param name="Name">What users write (<c>--layer layer3</c>); torchvision's module names where they correspond.</param>
/// <param name="ValueName">The value in the ONNX graph (see <see cref="OnnxGraphModule.ValueNames"/>).</param>
/// <param name="Shape">Per-image output shape (C×H×W) at the model's input size.</param>
public sealed record ModelTap(string Name, string ValueName, IReadOnlyList<long> Shape);

/// <summary>A built-in model, loaded: the network, how images must be prepared for it, and its named taps.</summary>
public sealed class BuiltInModel : IDisposable
{
    internal BuiltInModel(string name, OnnxGraphModule network, Preprocessing preprocessing, IReadOnlyList<ModelTap> taps)
    {
        Name = name;
        Network = network;
        Preprocessing = preprocessing;
        Taps = taps;
    }

    public string Name { get; }

    /// <summary>The network, trainable, on the CPU and in training mode as TorchSharp modules start: call eval() to infer.</summary>
    public OnnxGraphModule Network { get; }

    public Preprocessing Preprocessing { get; }

    /// <summary>Named taps from the input side to the output, the last being what <c>forward</c> returns.</summary>
    public IReadOnlyList<ModelTap> Taps { get; }

    public ModelTap Tap(string name) =>
        Taps.FirstOrDefault(t => t.Name == name)
        ?? throw new ArgumentException(
            $"{Name} has no layer '{name}' (layers: {string.Join(", ", Taps.Select(t => t.Name))}).", nameof(name));

    public void Dispose() => Network.Dispose();
}

/// <summary>
/// Models that ship with the worker, so they work with no network access: their files are copied into the build and
/// publish output under <c>models/&lt;name&gt;/</c> (see Cluster.GpuWorker.csproj).
/// </summary>
public static class BuiltInModels
{
    /// <summary>
    /// ImageNet-trained ResNet-18 (CNTK, converted to ONNX by Microsoft for ML.NET's DnnImageFeaturizer): output is the
    /// 512-d global average pool; there is no classifier layer.
    /// </summary>
    public const string ResNet18ImageNet = "resnet18-imagenet";

    private const string ResNet18File = "ResNet18.onnx";
    private const string ResNet18PreprocessFile = "ResNetPreprocess.onnx";

    /// <summary>The stage outputs of ResNet18.onnx, named as torchvision names the same modules.</summary>
    private static readonly ModelTap[] s_resNet18Taps =
    [
        new("maxpool", "Pooling255_Output_0", [64, 56, 56]),
        new("layer1", "ReLU283_Output_0", [64, 56, 56]),
        new("layer2", "ReLU315_Output_0", [128, 28, 28]),
        new("layer3", "ReLU347_Output_0", [256, 14, 14]),
        new("layer4", "ReLU393_Output_0", [512, 7, 7]),
        new("avgpool", "Pooling395_Output_0", [512, 1, 1]),
    ];

    public static IReadOnlyList<string> Names { get; } = [ResNet18ImageNet];

    /// <summary>models/ beside the worker's files (AppContext.BaseDirectory, which single-file publishing keeps right).</summary>
    public static string DefaultDirectory => Path.Combine(AppContext.BaseDirectory, "models");

    /// <summary>Imports the network (63 MB of weights for ResNet-18: a few seconds on two cores) with its preprocessing and taps.</summary>
    public static BuiltInModel Load(string name, string? modelsDirectory = null)
    {
        string folder = ModelFolder(name, modelsDirectory);
        Preprocessing preprocessing = LoadPreprocessing(name, modelsDirectory);
        string networkPath = Path.Combine(folder, ResNet18File);
        ModelProto graph = OnnxImporter.ReadModel(networkPath);
        MakeFinalPoolGlobal(graph, networkPath);
        OnnxGraphModule network = OnnxImporter.Import(graph, networkPath);
        try
        {
            string? missing = s_resNet18Taps.Select(t => t.ValueName).FirstOrDefault(v => !network.ValueNames.Contains(v));
            if (missing is not null)
            {
                throw new OnnxImportException(
                    $"{ResNet18File}: has no value '{missing}'; this is not the ResNet-18 file {ResNet18ImageNet} was written for.");
            }
            return new BuiltInModel(name, network, preprocessing, s_resNet18Taps);
        }
        catch
        {
            network.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The preprocessing alone (no weights loaded), read from ResNetPreprocess.onnx, whose graph is
    /// Split(RGB) → Concat(B, G, R) → Sub(MeanImage) on 0..255 pixels. The graph is checked to be exactly that, so a
    /// different file cannot be misread silently.
    /// <para>
    /// Resize: the shorter side to 224, then the centre 224×224 crop (ResizeTo = InputSize = 224). That is what
    /// ML.NET's ResizeImages does by default (IsoCrop, centre anchor) in the pipelines this model was published
    /// for; torchvision's 256 → 224 crop would zoom in by 14% relative to that.
    /// </para>
    /// </summary>
    public static Preprocessing LoadPreprocessing(string name, string? modelsDirectory = null)
    {
        string path = Path.Combine(ModelFolder(name, modelsDirectory), ResNet18PreprocessFile);
        ModelProto model = OnnxImporter.ReadModel(path);
        GraphProto graph = model.Graph;
        [DoesNotReturn]
        void Fail(string what) => throw new OnnxImportException(
            $"{ResNet18PreprocessFile}: {what}; expected Split(RGB) -> Concat(B, G, R) -> Sub(MeanImage) on a 1x3x224x224 input.");

        if (graph?.Node.Count != 3)
        {
            Fail($"has {graph?.Node.Count ?? 0} nodes");
        }
        NodeProto split = graph.Node[0];
        NodeProto concat = graph.Node[1];
        NodeProto subtract = graph.Node[2];
        if (split.OpType != "Split" || concat.OpType != "Concat" || subtract.OpType != "Sub")
        {
            Fail($"its nodes are {split.OpType}, {concat.OpType}, {subtract.OpType}");
        }
        if (split.Input[0] != graph.Input[0].Name || split.Output.Count != 3 || AxisOf(split) != 1 || AxisOf(concat) != 1)
        {
            Fail("the split is not of the input's channels into three");
        }
        // Channel order after the Concat: which of the split outputs (0 = R, 1 = G, 2 = B) comes first.
        int[] order = [.. concat.Input.Select(i => split.Output.IndexOf(i))];
        if (!order.SequenceEqual([2, 1, 0]))
        {
            Fail($"the channels are re-ordered as [{string.Join(",", order)}], not B, G, R");
        }
        if (subtract.Input[0] != concat.Output[0] || subtract.Output[0] != graph.Output[0].Name)
        {
            Fail("the mean is not subtracted from the re-ordered image");
        }
        TensorProto? mean = graph.Initializer.FirstOrDefault(t => t.Name == subtract.Input[1]);
        if (mean is null || !mean.Dims.SequenceEqual([1L, 3, 224, 224]))
        {
            Fail("the subtracted value is not a 1x3x224x224 constant");
        }
        float[] meanImage;
        using (Tensor values = OnnxTensors.ToTorch(mean, path, $"initializer '{mean.Name}'"))
        using (Tensor asFloat = values.to(ScalarType.Float32))
        {
            meanImage = asFloat.data<float>().ToArray();
        }
        // The name goes into feature-set keys, so it carries a digest of the mean image: a different file, a new key.
        string digest = Convert.ToHexStringLower(SHA256.HashData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(meanImage.AsSpan())))[..8];
        return new Preprocessing(
            Name: $"{ResNet18ImageNet}-bgr255-meanimage-{digest}-224",
            InputSize: 224,
            ResizeTo: 224,
            Order: ColorOrder.Bgr,
            Scale: 1f,
            Mean: [0f, 0f, 0f],
            Std: [1f, 1f, 1f],
            MeanImage: meanImage);
    }

    /// <summary>
    /// The file ends in a 7×7 AveragePool (stride 1, no padding) over layer4's 7×7 map at 224: at that size it is the
    /// global average pool, but at any other input size it is not (at 64, layer4 is 2×2 and the pool cannot run; at
    /// 256 it would give 2×2 outputs). It is replaced by GlobalAveragePool, which computes the same mean at 224 (the
    /// window covers the whole map, so count_include_pad does not matter) and the global mean at every other size, so
    /// the network runs at any input size from 16 pixels (layer4 is then 1×1). The node is checked to be
    /// exactly that pool before it is replaced, so a different file is refused rather than changed.
    /// </summary>
    private static void MakeFinalPoolGlobal(ModelProto model, string path)
    {
        string poolValue = s_resNet18Taps[^1].ValueName;
        NodeProto? pool = model.Graph?.Node.FirstOrDefault(n => n.Output.Contains(poolValue));
        long[] Ints(string name) => pool?.Attribute.FirstOrDefault(a => a.Name == name)?.Ints.ToArray() ?? [];
        string autoPad = pool?.Attribute.FirstOrDefault(a => a.Name == "auto_pad")?.S.ToStringUtf8() ?? "NOTSET";
        if (pool is not { OpType: "AveragePool" } || !Ints("kernel_shape").SequenceEqual([7L, 7L])
            || Ints("strides").Any(s => s != 1) || Ints("pads").Any(p => p != 0) || autoPad != "NOTSET")
        {
            throw new OnnxImportException(
                $"{Path.GetFileName(path)}: '{poolValue}' is not the 7x7 stride-1 unpadded AveragePool over layer4; this is not the ResNet-18 file {ResNet18ImageNet} was written for.");
        }
        pool.OpType = "GlobalAveragePool";
        pool.Attribute.Clear();
    }

    private static long AxisOf(NodeProto node) => node.Attribute.FirstOrDefault(a => a.Name == "axis")?.I ?? 0;

    private static string ModelFolder(string name, string? modelsDirectory)
    {
        if (!Names.Contains(name))
        {
            throw new ArgumentException($"'{name}' is not a built-in model (built-in: {string.Join(", ", Names)}).", nameof(name));
        }
        string folder = Path.Combine(modelsDirectory ?? DefaultDirectory, name);
        if (!File.Exists(Path.Combine(folder, ResNet18File)) || !File.Exists(Path.Combine(folder, ResNet18PreprocessFile)))
        {
            throw new FileNotFoundException(
                $"The built-in model {name} is not installed: expected {ResNet18File} and {ResNet18PreprocessFile} in {folder} " +
                "(they are copied there from the NuGet package Microsoft.ML.DnnImageFeaturizer.ResNet18 by the build).");
        }
        return folder;
    }
}
