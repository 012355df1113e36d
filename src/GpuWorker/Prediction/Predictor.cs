using System.Text.Json;
using Cluster.GpuWorker.Images;
using Cluster.GpuWorker.Kernels;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Weights;
using Cluster.Storage.Datasets;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Prediction;

/// <summary>One class of a prediction, by rank.</summary>
public sealed record ClassProbability(int Index, string Class, double Probability);

/// <summary>An image's top-k classes, or why it was skipped.</summary>
public sealed record ImagePrediction(string Image, IReadOnlyList<ClassProbability> Top, string? Skipped = null);

/// <summary>
/// Case 1 of the reference material, the pretrained network as is: images through a model with a classifier,
/// softmax, top-k classes with their names. Checkpoints written by this project carry their class names in the
/// safetensors metadata (<see cref="ArchitectureKey"/>, <see cref="ClassNamesKey"/>).
/// </summary>
public sealed class Predictor : IDisposable
{
    public const string ArchitectureKey = "architecture";
    public const string ClassNamesKey = "class_names";

    private readonly InferenceModel _model;
    private readonly string _output;
    private readonly ImageDecoder _decoder = new();

    /// <summary>Prepares <paramref name="model"/> as a worker prepares its models: float32, channels-last, checked kernels.</summary>
    private Predictor(ArchitectureInfo architecture, Backbone model, IReadOnlyList<string> classNames, KernelVerifier verifier, Preprocessing? preprocessing = null)
    {
        Architecture = architecture;
        ClassNames = classNames;
        Preprocessing = preprocessing ?? architecture.Preprocessing;
        _output = model.Steps[^1].Name;
        _model = InferenceModel.Prepare(model, "fp32", CPU, verifier, new KernelPlan(Preprocessing.InputSize, [1], get_num_threads(), _output));
    }

    /// <summary>How images are prepared: the architecture's own, or a trained model's (its input size).</summary>
    public Preprocessing Preprocessing { get; }

    /// <summary>
    /// A trial's checkpoint (the trainer's layout: "model/…" tensors, and the JSON beside it with the architecture, input
    /// size and class names): a fine-tuned network predicting the user's own classes.
    /// </summary>
    public static Predictor FromTrainingCheckpoint(string tensorsFile, IReadOnlyDictionary<string, string> state, KernelVerifier verifier)
    {
        ArgumentNullException.ThrowIfNull(state);
        if (state.GetValueOrDefault("strategy") == "feature-extractor")
        {
            throw new ArgumentException($"{tensorsFile} holds a feature-extractor head ({state.GetValueOrDefault("head")}), not a network: predicting with a head on cached features is not built yet");
        }
        string architecture = state.GetValueOrDefault("architecture") ?? state.GetValueOrDefault("model")
            ?? throw new WeightsFileException(tensorsFile, "the checkpoint's description names no architecture");
        string[] names = JsonSerializer.Deserialize<string[]>(state.GetValueOrDefault("classes") ?? "null")
            ?? throw new WeightsFileException(tensorsFile, "the checkpoint's description has no class names");
        int inputSize = int.Parse(state.GetValueOrDefault("input_size") ?? "0", System.Globalization.CultureInfo.InvariantCulture);
        ArchitectureInfo info = ModelCatalog.Find(architecture);
        Backbone model = info.Build(new BackboneOptions(NumClasses: names.Length));
        using (StateDict file = StateDictFile.Load(tensorsFile))
        {
            const string Prefix = "model/";
            var weights = file.Where(p => p.Key.StartsWith(Prefix, StringComparison.Ordinal)).ToDictionary(p => p.Key[Prefix.Length..], p => p.Value, StringComparer.Ordinal);
            WeightsLoader.Apply(model, weights, strict: true);
        }
        Preprocessing preprocessing = inputSize > 0 ? info.Preprocessing.AtSize(inputSize) : info.Preprocessing;
        return new Predictor(info, model, names, verifier, preprocessing);
    }

    public ArchitectureInfo Architecture { get; }

    public IReadOnlyList<string> ClassNames { get; }

    /// <summary>An architecture with its own classifier; ImageNet names for 1000 outputs. Null weights: random (a warning case for the caller).</summary>
    public static Predictor FromArchitecture(string architecture, string? weightsFile, KernelVerifier verifier)
    {
        ArchitectureInfo info = ModelCatalog.Find(architecture);
        Backbone model = info.Build();
        if (!model.IncludeTop)
        {
            model.Dispose();
            throw new ArgumentException(
                $"{info.Name} has no classifier (it is a feature extractor): use `coordinator extract`, or give --checkpoint of a head trained on it.");
        }
        if (weightsFile is not null)
        {
            using StateDict weights = StateDictFile.Load(weightsFile);
            WeightsLoader.Apply(model, weights, strict: true);
        }
        int outputs = (int)model.TraceShapes(info.InputSize)[^1].Shape[0];
        IReadOnlyList<string> names = outputs == ImageNetClasses.Names.Count
            ? ImageNetClasses.Names
            : Enumerable.Range(0, outputs).Select(i => $"class {i}").ToList();
        return new Predictor(info, model, names, verifier);
    }

    /// <summary>A checkpoint written by this project: architecture and class names from its metadata.</summary>
    public static Predictor FromCheckpoint(string checkpointFile, KernelVerifier verifier)
    {
        using StateDict weights = StateDictFile.Load(checkpointFile);
        IReadOnlyDictionary<string, string> metadata = weights.Metadata;
        if (!metadata.TryGetValue(ArchitectureKey, out string? architecture) || !metadata.TryGetValue(ClassNamesKey, out string? namesJson))
        {
            throw new WeightsFileException(checkpointFile, $"not a checkpoint of this project: its metadata lacks '{ArchitectureKey}' or '{ClassNamesKey}' (use --model ARCH --weights FILE for plain weights)");
        }
        string[] names = JsonSerializer.Deserialize<string[]>(namesJson)
            ?? throw new WeightsFileException(checkpointFile, $"metadata '{ClassNamesKey}' is not a JSON array of strings");
        ArchitectureInfo info = ModelCatalog.Find(architecture);
        Backbone model = info.Build(new BackboneOptions(NumClasses: names.Length));
        WeightsLoader.Apply(model, weights, strict: true);
        return new Predictor(info, model, names, verifier);
    }

    /// <summary>Writes a checkpoint `FromCheckpoint` reads back: the weights, the architecture and the class names.</summary>
    public static void SaveCheckpoint(string path, string architecture, nn.Module model, IReadOnlyList<string> classNames) =>
        StateDictFile.SaveSafetensors(path, model, new Dictionary<string, string>
        {
            [ArchitectureKey] = architecture,
            [ClassNamesKey] = JsonSerializer.Serialize(classNames),
        });

    public IReadOnlyList<ImagePrediction> Predict(IReadOnlyList<string> images, int top, int batchSize = 16)
    {
        Preprocessing preprocessing = Preprocessing;
        int length = ImageDecoder.ImageLength(preprocessing);
        int side = preprocessing.InputSize;
        var results = new ImagePrediction[images.Count];
        // Every batch runs at one size, the one checked, padded with zero images where the images run out or some were
        // skipped (each image's prediction is its own): a few wasted rows instead of a kernel check per batch size.
        int rows = Math.Max(1, Math.Min(batchSize, images.Count));
        _model.EnsureVerified(new KernelPlan(side, [rows], get_num_threads(), _output));
        var buffer = new float[rows * length];
        var batch = new List<int>(batchSize);
        for (int start = 0; start < images.Count; start += rows)
        {
            batch.Clear();
            for (int i = start; i < Math.Min(images.Count, start + rows); i++)
            {
                ImageDecodeResult decoded = _decoder.Decode(images[i], preprocessing, buffer.AsSpan(batch.Count * length, length));
                if (decoded.IsOk)
                {
                    batch.Add(i);
                }
                else
                {
                    results[i] = new ImagePrediction(images[i], [], $"{decoded.Reason!.Value.Code()}: {decoded.Message}");
                }
            }
            if (batch.Count == 0)
            {
                continue;
            }
            buffer.AsSpan(batch.Count * length).Clear();
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            Tensor input = ImageBatch.View(buffer, rows, side);
            Tensor probabilities = nn.functional.softmax(_model.ForwardTo(_model.PrepareInput(input), _output), 1);
            int k = Math.Min(top, ClassNames.Count);
            var (values, indices) = probabilities.topk(k, dim: 1);
            float[] p = values.data<float>().ToArray();
            long[] index = indices.data<long>().ToArray();
            for (int b = 0; b < batch.Count; b++)
            {
                results[batch[b]] = new ImagePrediction(images[batch[b]],
                    Enumerable.Range(0, k).Select(j => new ClassProbability((int)index[b * k + j], ClassNames[(int)index[b * k + j]], p[b * k + j])).ToList());
            }
        }
        return results;
    }

    public void Dispose() => _model.Dispose();
}
