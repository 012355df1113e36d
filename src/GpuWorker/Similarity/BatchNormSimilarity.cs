using Cluster.GpuWorker.Images;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Onnx;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Similarity;

/// <summary>One batch norm's input: per-channel mean and variance as observed on a sample and as recorded in pretraining.</summary>
/// <param name="Layer">The batch norm (module path, or ONNX node name) the statistics belong to.</param>
public sealed record BatchNormLayerStatistics(string Layer, double[] ObservedMean, double[] ObservedVariance, double[] RunningMean, double[] RunningVariance);

/// <summary>How close a dataset is to a network's pretraining data, as <see cref="BatchNormSimilarity"/> measures it.</summary>
/// <param name="Score">exp(−<paramref name="Divergence"/>), in (0, 1]: 1 when the sample's statistics equal the recorded ones.</param>
/// <param name="Divergence">The mean over layers of each layer's mean over channels of KL(sample ‖ recorded), in nats.</param>
/// <param name="Images">Images of the sample that decoded and ran.</param>
/// <param name="Layers">Batch norms compared.</param>
public sealed record DomainSimilarity(double Score, double Divergence, int Images, int Layers, int InputSize);

/// <summary>
/// A dataset's similarity to the domain a network was pretrained on, for `strategy: auto`. Every batch norm recorded the
/// running mean and variance of its input over the pretraining data; running the network (eval mode) on a sample of the
/// new images and comparing the mean and variance of the same inputs with those records says how far the new data
/// moves the network's activations from what it learnt on. Each channel is compared as two 1-D Gaussians by
/// KL(sample ‖ recorded) (zero when they agree; large when a channel's activations sit where pretraining rarely put
/// them), averaged over the channels of a layer, then over layers so that wide late layers do not outvote early ones;
/// the score is exp(−divergence). This is the statistic domain-adaptation work (AdaBN, BN-statistics alignment) moves
/// between domains; here it is only read, never changed. A network without batch norms has nothing to compare:
/// <see cref="Measure"/> returns null and the caller says so.
/// </summary>
public static class BatchNormSimilarity
{
    /// <summary>The largest sample measured: enough for stable per-channel moments (each averages over N×H×W values), small enough for plan time.</summary>
    public const int MaxSampleImages = 128;

    /// <summary>Added to both variances, as batch norms add it: a channel that is (nearly) constant must not divide by zero.</summary>
    private const double VarianceFloor = 1e-5;

    /// <summary>KL(P ‖ Q) of two 1-D Gaussians P = N(meanP, varP) and Q = N(meanQ, varQ), in nats.</summary>
    public static double GaussianKl(double meanP, double varP, double meanQ, double varQ)
    {
        double p = varP + VarianceFloor, q = varQ + VarianceFloor;
        double shift = meanP - meanQ;
        return 0.5 * (Math.Log(q / p) + (p + shift * shift) / q - 1);
    }

    /// <summary>The score of statistics already gathered (pure, so tested on synthetic moments).</summary>
    public static DomainSimilarity Score(IReadOnlyList<BatchNormLayerStatistics> layers, int images, int inputSize)
    {
        ArgumentNullException.ThrowIfNull(layers);
        if (layers.Count == 0)
        {
            throw new ArgumentException("no batch norm statistics to compare", nameof(layers));
        }
        double divergence = layers.Average(l => Enumerable.Range(0, l.ObservedMean.Length)
            .Average(c => GaussianKl(l.ObservedMean[c], l.ObservedVariance[c], l.RunningMean[c], l.RunningVariance[c])));
        return new DomainSimilarity(Math.Exp(-divergence), divergence, images, layers.Count, inputSize);
    }

    /// <summary>
    /// Measures <paramref name="backbone"/> (its pretrained weights loaded) on the images at <paramref name="imagePaths"/>,
    /// decoded with <paramref name="preprocessing"/>; null when the network has no batch norm. Images that do not decode
    /// are left out of the sample. The backbone is put in eval mode.
    /// </summary>
    public static DomainSimilarity? Measure(Backbone backbone, Preprocessing preprocessing, IReadOnlyList<string> imagePaths, int batchSize = 16)
    {
        ArgumentNullException.ThrowIfNull(backbone);
        ArgumentNullException.ThrowIfNull(preprocessing);
        ArgumentNullException.ThrowIfNull(imagePaths);
        backbone.eval();
        IStatisticsSource? source = backbone.modules().OfType<OnnxGraphModule>().FirstOrDefault() is OnnxGraphModule graph
            ? GraphStatistics.For(graph)
            : ModuleStatistics.For(backbone);
        if (source is null)
        {
            return null;
        }
        using (source)
        {
            var decoder = new ImageDecoder();
            int length = ImageDecoder.ImageLength(preprocessing);
            int images = 0;
            for (int start = 0; start < imagePaths.Count; start += batchSize)
            {
                int count = Math.Min(batchSize, imagePaths.Count - start);
                float[] buffer = new float[count * length];
                int decoded = 0;
                for (int i = 0; i < count; i++)
                {
                    if (decoder.Decode(imagePaths[start + i], preprocessing, buffer.AsSpan(decoded * length, length)).IsOk)
                    {
                        decoded++;
                    }
                }
                if (decoded == 0)
                {
                    continue;
                }
                using var scope = NewDisposeScope();
                using var noGrad = no_grad();
                Tensor batch = tensor(buffer, [count, 3, preprocessing.InputSize, preprocessing.InputSize]).narrow(0, 0, decoded);
                source.Run(backbone, batch);
                images += decoded;
            }
            if (images == 0)
            {
                throw new InvalidDataException($"none of the {imagePaths.Count} sampled images decoded");
            }
            return Score(source.Statistics(), images, preprocessing.InputSize);
        }
    }

    /// <summary>A recorded statistic as doubles, through a copy that is disposed here (the buffer itself stays the module's).</summary>
    private static double[] Doubles(Tensor statistic)
    {
        using Tensor copy = statistic.to_type(ScalarType.Float64, copy: true);
        return [.. copy.data<double>()];
    }

    /// <summary>Sums of a batch norm's input per channel over every image and position, in float64 (a sample is ~10⁷ values).</summary>
    private sealed class Moments(string layer, double[] runningMean, double[] runningVariance)
    {
        private double[]? _sum;
        private double[]? _squares;
        private long _count;

        public void Add(Tensor input)
        {
            using var scope = NewDisposeScope();
            Tensor x = input.to_type(ScalarType.Float64).transpose(0, 1).flatten(1);
            double[] sum = x.sum(1).data<double>().ToArray();
            double[] squares = x.square().sum(1).data<double>().ToArray();
            _sum ??= new double[sum.Length];
            _squares ??= new double[sum.Length];
            for (int c = 0; c < sum.Length; c++)
            {
                _sum[c] += sum[c];
                _squares[c] += squares[c];
            }
            _count += x.shape[1];
        }

        public BatchNormLayerStatistics Statistics()
        {
            double[] mean = [.. _sum!.Select(s => s / _count)];
            // Population variance, as a batch norm normalises with; clamped at 0 against rounding.
            double[] variance = [.. _squares!.Select((s, c) => Math.Max(0, s / _count - mean[c] * mean[c]))];
            return new BatchNormLayerStatistics(layer, mean, variance, runningMean, runningVariance);
        }
    }

    private interface IStatisticsSource : IDisposable
    {
        void Run(Backbone backbone, Tensor batch);

        IReadOnlyList<BatchNormLayerStatistics> Statistics();
    }

    /// <summary>An imported graph: each BatchNormalization's input is a value the graph computes; one run yields them all.</summary>
    private sealed class GraphStatistics : IStatisticsSource
    {
        private readonly OnnxGraphModule _graph;
        private readonly List<(string Value, Moments Moments)> _layers;

        private GraphStatistics(OnnxGraphModule graph, List<(string, Moments)> layers)
        {
            _graph = graph;
            _layers = layers;
        }

        public static GraphStatistics? For(OnnxGraphModule graph)
        {
            var buffers = graph.named_buffers().Concat(graph.named_parameters().Select(p => (p.name, (Tensor)p.parameter)))
                .ToDictionary(b => b.Item1, b => b.Item2, StringComparer.Ordinal);
            double[] Values(string initializer) => Doubles(buffers[graph.StateDictNames[initializer]]);
            var layers = graph.Nodes
                .Where(n => n.OpType == "BatchNormalization" && graph.ValueNames.Contains(n.Inputs[0]))
                .Select(n => (n.Inputs[0], new Moments(n.Name.Length > 0 ? n.Name : n.Outputs[0], Values(n.Inputs[3]), Values(n.Inputs[4]))))
                .ToList();
            return layers.Count == 0 ? null : new GraphStatistics(graph, layers);
        }

        public void Run(Backbone backbone, Tensor batch)
        {
            IReadOnlyDictionary<string, Tensor> values = _graph.ForwardTaps(batch, [.. _layers.Select(l => l.Value)]);
            try
            {
                foreach ((string value, Moments moments) in _layers)
                {
                    moments.Add(values[value]);
                }
            }
            finally
            {
                foreach (Tensor value in values.Values.Distinct())
                {
                    value.Dispose();
                }
            }
        }

        public IReadOnlyList<BatchNormLayerStatistics> Statistics() => [.. _layers.Select(l => l.Moments.Statistics())];

        public void Dispose()
        {
        }
    }

    /// <summary>A chain of TorchSharp modules: a pre-hook on every BatchNorm2d sees its input as the backbone runs.</summary>
    private sealed class ModuleStatistics : IStatisticsSource
    {
        private readonly List<Moments> _layers;
        private readonly List<Action> _hooks;

        private ModuleStatistics(List<Moments> layers, List<Action> hooks)
        {
            _layers = layers;
            _hooks = hooks;
        }

        public static ModuleStatistics? For(Backbone backbone)
        {
            var layers = new List<Moments>();
            var hooks = new List<Action>();
            foreach ((string name, nn.Module module) in backbone.named_modules())
            {
                if (module is not BatchNorm2d norm || norm.running_mean is null || norm.running_var is null)
                {
                    continue;
                }
                var moments = new Moments(name, Doubles(norm.running_mean), Doubles(norm.running_var));
                layers.Add(moments);
                var remover = norm.register_forward_pre_hook((_, input) =>
                {
                    moments.Add(input);
                    return input;
                });
                hooks.Add(remover.remove);
            }
            return layers.Count == 0 ? null : new ModuleStatistics(layers, hooks);
        }

        public void Run(Backbone backbone, Tensor batch) => backbone.call(batch);

        public IReadOnlyList<BatchNormLayerStatistics> Statistics() => [.. _layers.Select(l => l.Statistics())];

        public void Dispose()
        {
            foreach (Action remove in _hooks)
            {
                remove();
            }
        }
    }
}
