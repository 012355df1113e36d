using Cluster.Contracts.Training;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Training.Heads;

namespace Cluster.GpuWorker.Training;

/// <summary>
/// A trial's settings parsed once into the types training uses, with the checks that need the model: the one place that
/// says which layers each epoch trains. fine-tune-top's first <see cref="TrialSettings.HeadEpochs"/> epochs train the new
/// head alone (everything up to the global pool frozen: the reference's "train the top model first"), the rest train the
/// layers after the cutoff with it.
/// </summary>
public sealed record TrialPlan(
    TrainingStrategy Strategy,
    ArchitectureInfo Architecture,
    HeadKind? Head,
    OptimizerKind Optimizer,
    Augmentation Augmentation,
    string? Cutoff,
    string PoolTap,
    int HeadEpochs)
{
    /// <summary>Stage names, also kept in checkpoints: "head" (fine-tune-top's first stage), "top", "all".</summary>
    public (string Stage, string? FrozenTap) StageOf(int epoch) => Strategy switch
    {
        TrainingStrategy.FineTuneTop when epoch < HeadEpochs => ("head", PoolTap),
        TrainingStrategy.FineTuneTop => ("top", Cutoff),
        TrainingStrategy.FeatureExtractor => ("head", Cutoff),
        _ => ("all", null),
    };

    public OptimizerSettings OptimizerSettings(TrialSettings settings) =>
        new(Optimizer, settings.Lr, settings.Momentum, settings.WeightDecay,
            settings.BackboneLrScale is double scale ? settings.Lr * scale : null);

    public static TrialPlan From(TrialSettings settings, int classCount)
    {
        ArgumentNullException.ThrowIfNull(settings);
        TrainingStrategy strategy = TrainingStrategies.Parse(settings.Strategy);
        ArchitectureInfo architecture = ModelCatalog.Find(settings.Model);
        if (strategy == TrainingStrategy.FromScratch && architecture.Name == BuiltInModels.ResNet18ImageNet)
        {
            // The imported graph's batch norms are inference-only (docs/onnx.md), so its layers cannot learn from random
            // weights; from scratch trains the same architecture in torchvision's layout.
            architecture = ModelCatalog.Find("resnet18");
        }
        HeadKind? head = strategy == TrainingStrategy.FeatureExtractor ? HeadKinds.Parse(settings.Head ?? "logistic") : null;
        OptimizerKind optimizer = Training.OptimizerSettings.Parse(settings.Optimizer);
        Augmentation augmentation = Augmentations.Parse(settings.Augment);
        LearningRateSchedule.Parse(settings.Schedule);
        if (classCount < 2)
        {
            throw new ArgumentException($"{classCount} class(es): a classifier needs at least 2");
        }
        // bf16 where it pays and is exact enough: the frozen prefix, run once by the extraction in bf16 (2-3x faster on
        // CPUs with AVX512-BF16, BENCHMARKS.md) and cached in bf16; the layers that train stay fp32, since TorchSharp
        // 0.107 has no autocast and a hand-cast bf16 backward would need fp32 master weights of its own.
        bool trainsOnCache = strategy == TrainingStrategy.FeatureExtractor || (strategy == TrainingStrategy.FineTuneTop && augmentation == Augmentation.None);
        if (settings.Precision == "bf16" && !trainsOnCache)
        {
            throw new ArgumentException($"precision bf16: only the frozen prefix of a trial that trains on the feature cache runs in bf16 (feature-extractor, or fine-tune-top without augmentation); {settings.Strategy} trains in fp32");
        }
        if (settings.Precision is not ("fp32" or "bf16"))
        {
            throw new ArgumentException($"precision {settings.Precision}: one of fp32, bf16");
        }
        string? cutoff = strategy switch
        {
            TrainingStrategy.FeatureExtractor => settings.Cutoff ?? architecture.DefaultTap,
            TrainingStrategy.FineTuneTop => settings.Cutoff ?? throw new ArgumentException("fine-tune-top needs a cutoff"),
            _ => null,
        };
        int headEpochs = strategy == TrainingStrategy.FineTuneTop ? Math.Min(settings.HeadEpochs, settings.Epochs) : 0;
        return new TrialPlan(strategy, architecture, head, optimizer, augmentation, cutoff, HeadTapOf(architecture), headEpochs);
    }

    /// <summary>
    /// The input of the new head: the last step before the classifier (the global pool of the ResNets, Inception and
    /// MobileNets; VGG's and AlexNet's last pool, flattened). fine-tune-top's first stage freezes everything up to it.
    /// </summary>
    public static string HeadTapOf(ArchitectureInfo architecture)
    {
        ArgumentNullException.ThrowIfNull(architecture);
        return s_headTaps.GetOrAdd(architecture.Name, _ =>
        {
            using Backbone model = architecture.Build(new BackboneOptions(IncludeTop: true, NumClasses: 2));
            return model.Steps.Last(s => !s.IsClassifier).Name;
        });
    }

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, string> s_headTaps = new(StringComparer.Ordinal);
}
