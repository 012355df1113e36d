using System.Diagnostics;
using Cluster.GpuWorker.Kernels;
using Cluster.GpuWorker.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Training;

/// <summary>The outcome of one pass over a set of rows.</summary>
/// <param name="Loss">Mean cross-entropy over the rows (while training: of the batches as they were trained).</param>
public sealed record EpochMetrics(double Loss, double Accuracy, int Rows, double Seconds)
{
    public double ImagesPerSecond => Seconds > 0 ? Rows / Seconds : 0;
}

/// <summary>
/// Trains the part of a backbone after a cutoff on that cutoff's activations (case 3's fine-tuning of the top layers,
/// on the feature cache at `--pool none`, so the frozen prefix is never run again): everything up to the cutoff is
/// frozen (no gradients, never stepped), the suffix is in train mode (its batch norms use batch statistics and update
/// their running ones, as PyTorch's do), the loss is cross-entropy. The loop is TorchSharp's MNIST example's: one
/// dispose scope per batch around zero_grad, forward, backward and step, scalars read inside it. Shuffling uses the
/// caller's generator, never torch's global one. Checked against PyTorch 1.13's own steps (SuffixTrainerTests).
/// </summary>
public sealed class SuffixTrainer : IDisposable
{
    private readonly Backbone _model;
    private readonly string? _cutoff;
    private readonly optim.Optimizer _optimizer;
    private readonly IReadOnlyList<nn.Module> _frozen;
    private readonly double[] _baseRates;

    /// <param name="kernels">When given, the convolutions the suffix trains through are checked, forward and backward, for <paramref name="plan"/> first.</param>
    /// <param name="cutoff">The last frozen layer; null trains every layer from the images (fine-tune-all, from-scratch).</param>
    public SuffixTrainer(Backbone model, string? cutoff, OptimizerSettings optimizer, KernelVerifier? kernels = null, KernelPlan? plan = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(optimizer);
        if (optimizer.Problem() is string problem)
        {
            throw new ArgumentException($"optimizer {OptimizerSettings.NameOf(optimizer.Kind)}: {problem}");
        }
        int last = cutoff is null ? -1 : model.ResolveTap(cutoff);
        if (last >= model.Steps.Count - 1)
        {
            throw new ArgumentException($"cutoff '{cutoff}' is the last layer of {model.GetName()}: nothing after it would train");
        }
        _model = model;
        _cutoff = cutoff;
        _frozen = [.. model.Steps.Take(last + 1).Select(s => s.Module).OfType<nn.Module>()];
        // Everything after the cutoff trains, also when an earlier trainer of the same model froze more of it
        // (fine-tune-top's head-only stage freezes up to the global pool before the top is unfrozen).
        foreach (Parameter parameter in model.parameters())
        {
            parameter.requires_grad = true;
        }
        foreach (nn.Module module in _frozen)
        {
            foreach (Parameter parameter in module.parameters())
            {
                parameter.requires_grad = false;
            }
        }
        if (kernels is not null)
        {
            ArgumentNullException.ThrowIfNull(plan);
            model.CheckKernels(kernels, plan with { Pass = KernelPass.Backward });
        }
        // An imported graph's prefix has no modules of its own: its parameters get no gradients because ForwardFrom never
        // runs them, and the optimizers skip parameters without one.
        Parameter[] trainable = [.. model.parameters().Where(p => p.requires_grad)];
        TrainableParameters = trainable.Sum(p => p.numel());
        // The classifier's parameters (the new head) and the backbone's, in two groups when their rates differ.
        var head = new HashSet<Parameter>(model.Steps.Where(s => s.IsClassifier && s.Module is not null).SelectMany(s => s.Module!.parameters()), ReferenceEqualityComparer.Instance);
        double backboneRate = optimizer.BackboneLearningRate ?? optimizer.LearningRate;
        (Parameter[] Parameters, double Rate)[] groups =
        [
            ([.. trainable.Where(p => !head.Contains(p))], backboneRate),
            ([.. trainable.Where(head.Contains)], optimizer.LearningRate),
        ];
        groups = [.. groups.Where(g => g.Parameters.Length > 0)];
        _baseRates = [.. groups.Select(g => g.Rate)];
        double momentum = optimizer.Momentum;
        double decay = optimizer.WeightDecay;
        _optimizer = optimizer.Kind switch
        {
            OptimizerKind.Sgd => optim.SGD(groups.Select(g => new SGD.ParamGroup(g.Parameters, lr: g.Rate, momentum: momentum, weight_decay: decay)), optimizer.LearningRate, momentum: momentum, weight_decay: decay),
            OptimizerKind.Adam => optim.Adam(groups.Select(g => new Adam.ParamGroup(g.Parameters, lr: g.Rate, weight_decay: decay)), optimizer.LearningRate, weight_decay: decay),
            OptimizerKind.AdamW => optim.AdamW(groups.Select(g => new AdamW.ParamGroup(g.Parameters, lr: g.Rate, weight_decay: decay)), optimizer.LearningRate, weight_decay: decay),
            _ => throw new ArgumentOutOfRangeException(nameof(optimizer), optimizer.Kind, null),
        };
    }

    /// <summary>Sets every parameter group's rate to its base rate times <paramref name="factor"/> (the schedule's, per epoch).</summary>
    public void ScaleLearningRates(double factor)
    {
        int i = 0;
        foreach (optim.ILearningRateController group in ((OptimizerHelper)_optimizer).ParamGroups)
        {
            group.LearningRate = _baseRates[i++] * factor;
        }
    }

    /// <summary>The head's current rate (the last group's: the classifier's when it trains).</summary>
    public double LearningRate => ((OptimizerHelper)_optimizer).ParamGroups.Last().LearningRate;

    /// <summary>The optimizer's state (momentum buffers, Adam's moments and step counts) as bytes, for a checkpoint.</summary>
    public byte[] SaveOptimizerState()
    {
        using var buffer = new MemoryStream();
        using (var writer = new BinaryWriter(buffer, System.Text.Encoding.UTF8, leaveOpen: true))
        {
            ((OptimizerHelper)_optimizer).save_state_dict(writer);
        }
        return buffer.ToArray();
    }

    /// <summary>Restores what <see cref="SaveOptimizerState"/> saved, for an optimizer over the same parameters.</summary>
    public void LoadOptimizerState(byte[] state)
    {
        ArgumentNullException.ThrowIfNull(state);
        using var reader = new BinaryReader(new MemoryStream(state, writable: false));
        ((OptimizerHelper)_optimizer).load_state_dict(reader);
    }

    /// <summary>
    /// The frozen prefix's output for a batch of images, in eval mode and without gradients (with augmentation the cache
    /// cannot be used, but the prefix still never trains); the images themselves when every layer trains.
    /// </summary>
    public Tensor FrozenActivations(Tensor images)
    {
        ArgumentNullException.ThrowIfNull(images);
        if (_cutoff is null)
        {
            return images;
        }
        TrainMode();
        using var noGrad = no_grad();
        return _model.ForwardTo(images, _cutoff);
    }

    /// <summary>Elements of the parameters the optimizer steps (an imported graph's prefix included, though it gets no gradients).</summary>
    public long TrainableParameters { get; }

    /// <summary>One optimizer step on one batch of cutoff activations; returns its loss and how many it got right.</summary>
    public (double Loss, int Correct) Step(Tensor activations, Tensor labels)
    {
        ArgumentNullException.ThrowIfNull(activations);
        ArgumentNullException.ThrowIfNull(labels);
        TrainMode();
        using var scope = NewDisposeScope();
        _optimizer.zero_grad();
        Tensor logits = Forward(activations);
        Tensor loss = nn.functional.cross_entropy(logits, labels);
        loss.backward();
        _optimizer.step();
        return (loss.item<float>(), (int)logits.argmax(1).eq(labels).sum().item<long>());
    }

    /// <summary>One epoch over <paramref name="activations"/> in an order drawn from <paramref name="generator"/>.</summary>
    public EpochMetrics TrainEpoch(Tensor activations, Tensor labels, int batchSize, Generator generator, CancellationToken ct = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        long rows = activations.shape[0];
        var clock = Stopwatch.StartNew();
        double lossSum = 0;
        long correct = 0;
        using Tensor order = randperm(rows, generator: generator);
        for (long start = 0; start < rows; start += batchSize)
        {
            ct.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            Tensor batch = order.narrow(0, start, Math.Min(batchSize, rows - start));
            (double loss, int right) = Step(activations.index_select(0, batch), labels.index_select(0, batch));
            lossSum += loss * batch.shape[0];
            correct += right;
        }
        return new EpochMetrics(lossSum / rows, (double)correct / rows, (int)rows, clock.Elapsed.TotalSeconds);
    }

    /// <summary>Loss and accuracy in eval mode without gradients (validation and test sets).</summary>
    public EpochMetrics Evaluate(Tensor activations, Tensor labels, int batchSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        long rows = activations.shape[0];
        var clock = Stopwatch.StartNew();
        _model.eval();
        using var noGrad = no_grad();
        double lossSum = 0;
        long correct = 0;
        for (long start = 0; start < rows; start += batchSize)
        {
            using var scope = NewDisposeScope();
            long length = Math.Min(batchSize, rows - start);
            Tensor x = activations.narrow(0, start, length);
            Tensor y = labels.narrow(0, start, length);
            Tensor logits = Forward(x);
            lossSum += nn.functional.cross_entropy(logits, y, reduction: nn.Reduction.Sum).item<float>();
            correct += logits.argmax(1).eq(y).sum().item<long>();
        }
        return new EpochMetrics(lossSum / rows, (double)correct / rows, (int)rows, clock.Elapsed.TotalSeconds);
    }

    /// <summary>
    /// One batch of images through the whole network in eval mode without gradients: summed cross-entropy and how many it
    /// got right (validation and test sets of strategies that train from images).
    /// </summary>
    public (double LossSum, int Correct) EvaluateImages(Tensor images, Tensor labels) => EvaluateWith(_model.forward, images, labels);

    /// <summary>One batch of the cutoff's activations in eval mode without gradients: summed cross-entropy and how many it got right.</summary>
    public (double LossSum, int Correct) EvaluateBatch(Tensor activations, Tensor labels) => EvaluateWith(Forward, activations, labels);

    private (double LossSum, int Correct) EvaluateWith(Func<Tensor, Tensor> forward, Tensor input, Tensor labels)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(labels);
        _model.eval();
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        Tensor logits = forward(input);
        return (nn.functional.cross_entropy(logits, labels, reduction: nn.Reduction.Sum).item<float>(), (int)logits.argmax(1).eq(labels).sum().item<long>());
    }

    /// <summary>From the cutoff's activations, or from the images when every layer trains.</summary>
    private Tensor Forward(Tensor input) => _cutoff is null ? _model.forward(input) : _model.ForwardFrom(input, _cutoff);

    /// <summary>The suffix trains; frozen modules stay in eval mode (their batch norms keep their statistics).</summary>
    private void TrainMode()
    {
        _model.train();
        foreach (nn.Module module in _frozen)
        {
            module.eval();
        }
    }

    public void Dispose() => _optimizer.Dispose();
}
