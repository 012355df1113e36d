using Cluster.GpuWorker.Models;

namespace Cluster.GpuWorker.Training;

/// <summary>The ways to adapt a pretrained network (DESIGN.md; the reference material's cases 2 and 3, and the decision table's from-scratch).</summary>
public enum TrainingStrategy
{
    /// <summary>Case 2: the frozen backbone up to a tap, and another classifier trained on its cached features.</summary>
    FeatureExtractor,

    /// <summary>Case 3b: everything up to the cutoff frozen; the new head first on its own, then the top layers with it.</summary>
    FineTuneTop,

    /// <summary>Case 3a: every layer trains, at a reduced rate (optionally lower for the backbone than for the head).</summary>
    FineTuneAll,

    /// <summary>The same architecture from random weights: the decision table's answer for big, different data.</summary>
    FromScratch,
}

public static class TrainingStrategies
{
    private static readonly NameTable<TrainingStrategy> s_names = new("strategy", "a trial", new Dictionary<string, TrainingStrategy>(StringComparer.Ordinal)
    {
        ["feature-extractor"] = TrainingStrategy.FeatureExtractor,
        ["fine-tune-top"] = TrainingStrategy.FineTuneTop,
        ["fine-tune-all"] = TrainingStrategy.FineTuneAll,
        ["from-scratch"] = TrainingStrategy.FromScratch,
    });

    public static IReadOnlyCollection<string> Names => s_names.Names;

    public static TrainingStrategy Parse(string name) => s_names.Parse(name);

    public static string NameOf(TrainingStrategy strategy) => s_names.NameOf(strategy);
}

/// <summary>How training images are varied each epoch (the spec's `augment`).</summary>
public enum Augmentation
{
    None,

    /// <summary>A horizontal flip of half the images.</summary>
    Flip,

    /// <summary>A random resized crop (scale 0.25-1 of the area, aspect 3/4-4/3) of every image, then the flip.</summary>
    CropFlip,
}

public static class Augmentations
{
    private static readonly NameTable<Augmentation> s_names = new("augment", "a trial", new Dictionary<string, Augmentation>(StringComparer.Ordinal)
    {
        ["none"] = Augmentation.None,
        ["flip"] = Augmentation.Flip,
        ["crop-flip"] = Augmentation.CropFlip,
    });

    public static IReadOnlyCollection<string> Names => s_names.Names;

    public static Augmentation Parse(string name) => s_names.Parse(name);
}
