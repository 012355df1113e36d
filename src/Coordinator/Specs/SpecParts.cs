namespace Cluster.Coordinator.Specs;

/// <summary>A path as the spec writes it, and where it points: relative paths are taken from the spec file's folder.</summary>
public sealed record SpecPath(string Text, string FullPath)
{
    public override string ToString() => Text;
}

public enum SpecWeightsKind
{
    Builtin,
    Random,
    File,
}

/// <summary>One value of `weights`: builtin, random, or a file (with its resolved path).</summary>
public sealed record SpecWeights(SpecWeightsKind Kind, string Text, string? FullPath)
{
    public static SpecWeights Builtin { get; } = new(SpecWeightsKind.Builtin, SpecNames.BuiltinWeights, null);

    public override string ToString() => Text;
}

/// <summary>`dataset`: where the images are. Validation is either a folder or a fraction of train, never both.</summary>
/// <param name="ValidationFraction">The stratified, seeded share of train held out; null when <paramref name="ValidationPath"/> is set.</param>
public sealed record DatasetSpec(SpecPath Train, SpecPath? ValidationPath, double? ValidationFraction, SpecPath? Test, int Line);

/// <summary>`optimizer`: written as `{name, momentum, weight_decay}` or as just a name; each part a hyperparameter.</summary>
public sealed record OptimizerSpec(SpecValue<string> Name, SpecValue<double> Momentum, SpecValue<double> WeightDecay);

/// <summary>`search`: how trials are chosen. Unset numbers are left to the search method's own defaults.</summary>
/// <param name="Trials">random and asha: how many configurations to draw.</param>
/// <param name="MinEpochs">asha: epochs of the first rung.</param>
/// <param name="Reduction">asha: the factor by which each rung keeps fewer trials (above 1).</param>
public sealed record SearchSpec(string Method, int? Trials, int? MinEpochs, double? Reduction, int Line);

/// <summary>`metric`: what the search compares trials by, and which way is better.</summary>
public sealed record MetricSpec(string Name, string Mode, int Line);

/// <summary>`budget`: limits of the whole sweep; null where the spec sets none.</summary>
public sealed record BudgetSpec(long? StorageBytes, TimeSpan? WallTime, int Line)
{
    public static BudgetSpec None { get; } = new(null, null, 0);

    /// <summary>
    /// How the activations the planner stores are kept: fp32 (exact), bf16 or fp16 (half the bytes, rounded), or auto
    /// (fp32 where it fits the storage budget, bf16 for a set that fits only at half the size).
    /// </summary>
    public string Activations { get; init; } = "fp32";
}

/// <summary>
/// `auto`: the thresholds `strategy: auto` decides with (docs/architecture.md, "Strategy auto"). The defaults are the
/// calibrated ones; a spec overrides them, or gives the similarity itself (then nothing is measured: the escape for a
/// network without batch norms, or for data the user knows).
/// </summary>
/// <param name="SimilarAbove">Data is similar to the pretraining domain when its measured score is above this (0-1).</param>
/// <param name="BigFrom">Data is big from this many training images per class (after the validation split).</param>
/// <param name="Similarity">A similarity score given by the spec instead of measured; null: measure it.</param>
/// <param name="Line">The `auto` field's line; 0 when the spec has none.</param>
public sealed record AutoSpec(double SimilarAbove, int BigFrom, double? Similarity, int Line)
{
    /// <summary>Between the scores of natural photos and of Fashion-MNIST on resnet18-imagenet (docs/architecture.md has the figures).</summary>
    public const double DefaultSimilarAbove = 0.88;

    /// <summary>
    /// Above the reference's "small data" (cats_and_dogs_small: 1,000 training images per class, the Keras example the
    /// slides are built on) and at ImageNet-1k's ~1,281 per class, on which these networks are trained from scratch.
    /// </summary>
    public const int DefaultBigFrom = 1200;

    public static AutoSpec Default { get; } = new(DefaultSimilarAbove, DefaultBigFrom, null, 0);
}
