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
