using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Training.Heads;

/// <summary>
/// The reference material's top model on cached features: Flatten, Dense(256) ReLU, Dropout(0.5), Dense to the classes,
/// trained with Adam (AdamW with weight decay) on shuffled mini-batches. Deterministic for a seed: the initial weights
/// (PyTorch's Linear default, uniform ±1/√fan-in), the shuffling and the dropout masks all come from one generator
/// seeded from <see cref="HeadSettings.Seed"/>, never from torch's global one.
/// </summary>
public sealed class MlpHead : FeatureHead
{
    private readonly TopModel _model;

    private MlpHead(TopModel model, int featureCount, int classCount, IReadOnlyList<double> epochLosses)
        : base(featureCount, classCount)
    {
        _model = model;
        EpochLosses = epochLosses;
    }

    public override HeadKind Kind => HeadKind.Mlp;

    /// <summary>The mean training loss of each epoch (dropout on), first to last.</summary>
    public IReadOnlyList<double> EpochLosses { get; }

    /// <summary>The weights (state_dict names hidden.weight, hidden.bias, output.weight, output.bias).</summary>
    public nn.Module Module => _model;

    public override IReadOnlyList<(string Name, Tensor Value)> ToCheckpointTensors() =>
        [.. _model.state_dict().Select(p => (p.Key, p.Value.detach().clone()))];

    internal static MlpHead Fit(FeatureRows train, int classCount, HeadSettings settings)
    {
        var generator = new Generator(unchecked((ulong)settings.Seed));
        var model = new TopModel(train.Columns, settings.HiddenUnits, classCount, settings.Dropout, generator);
        try
        {
            using var data = NewDisposeScope();
            Tensor x = train.ToTensor();
            Tensor y = tensor(train.RequireLabels().Select(l => (long)l).ToArray());
            using optim.Optimizer optimizer = settings.WeightDecay > 0
                ? optim.AdamW(model.parameters(), settings.LearningRate, weight_decay: settings.WeightDecay)
                : optim.Adam(model.parameters(), settings.LearningRate);
            var losses = new List<double>(settings.Epochs);
            model.train();
            for (int epoch = 0; epoch < settings.Epochs; epoch++)
            {
                using Tensor order = randperm(train.Rows, generator: generator);
                double sum = 0;
                for (int start = 0; start < train.Rows; start += settings.BatchSize)
                {
                    using var batch = NewDisposeScope();
                    Tensor rows = order[start..Math.Min(start + settings.BatchSize, train.Rows)];
                    optimizer.zero_grad();
                    Tensor loss = nn.functional.cross_entropy(model.call(x.index_select(0, rows)), y.index_select(0, rows));
                    loss.backward();
                    optimizer.step();
                    sum += loss.item<float>() * rows.shape[0];
                }
                losses.Add(sum / train.Rows);
            }
            model.eval();
            return new MlpHead(model, train.Columns, classCount, losses);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    protected override double[] Probabilities(FeatureRows rows)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        return _model.call(rows.ToTensor()).softmax(1).to(ScalarType.Float64).data<double>().ToArray();
    }

    public override void Dispose()
    {
        _model.Dispose();
        base.Dispose();
    }

    /// <summary>Dense ReLU, dropout (masks drawn from the head's generator), Dense.</summary>
    private sealed class TopModel : nn.Module<Tensor, Tensor>
    {
        private readonly Linear hidden;
        private readonly Linear output;
        private readonly double _dropout;
        private readonly Generator _generator;

        public TopModel(int inputs, int hiddenUnits, int classes, double dropout, Generator generator)
            : base(nameof(TopModel))
        {
            hidden = nn.Linear(inputs, hiddenUnits);
            output = nn.Linear(hiddenUnits, classes);
            _dropout = dropout;
            _generator = generator;
            RegisterComponents();
            using var noGrad = no_grad();
            foreach (Linear layer in new[] { hidden, output })
            {
                double bound = 1.0 / Math.Sqrt(layer.weight!.shape[1]);
                layer.weight.copy_(rand(layer.weight.shape, generator: generator) * (2 * bound) - bound);
                layer.bias!.copy_(rand(layer.bias.shape, generator: generator) * (2 * bound) - bound);
            }
        }

        public override Tensor forward(Tensor features)
        {
            using var scope = NewDisposeScope();
            Tensor h = nn.functional.relu(hidden.call(features.flatten(1)));
            if (training && _dropout > 0)
            {
                // Inverted dropout, as torch's: kept units scaled by 1/(1-p) so evaluation needs no rescaling.
                Tensor keep = rand(h.shape, generator: _generator).ge(_dropout).to(h.dtype);
                h = h * keep / (1 - _dropout);
            }
            return output.call(h).MoveToOuterDisposeScope();
        }
    }
}
