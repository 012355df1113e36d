namespace Cluster.Coordinator.Specs;

/// <summary>
/// The names a sweep spec accepts for its enumerated fields (DESIGN.md's sweep spec; part of the contract), in the
/// order the error messages list them.
/// </summary>
public static class SpecNames
{
    public const string FeatureExtractor = "feature-extractor";
    public const string FineTuneTop = "fine-tune-top";
    public const string FineTuneAll = "fine-tune-all";
    public const string FromScratch = "from-scratch";

    /// <summary>The coordinator chooses from DESIGN.md's decision table (data size and similarity).</summary>
    public const string Auto = "auto";

    public static IReadOnlyList<string> Strategies { get; } = [FeatureExtractor, FineTuneTop, FineTuneAll, FromScratch, Auto];

    // lightgbm is a spec name (DESIGN.md) that the worker's heads do not train yet; the spec accepts it so that specs
    // written against the contract stay valid, and a trial naming it fails on the worker with that reason.
    public static IReadOnlyList<string> Heads { get; } = ["logistic", "mlp", "knn", "sdca", "lightgbm"];

    public static IReadOnlyList<string> Optimizers { get; } = ["sgd", "adam", "adamw"];

    public static IReadOnlyList<string> Schedules { get; } = ["constant", "step", "cosine"];

    public static IReadOnlyList<string> Augments { get; } = ["none", "flip", "crop-flip"];

    public static IReadOnlyList<string> Precisions { get; } = ["fp32", "bf16"];

    public static IReadOnlyList<string> SearchMethods { get; } = ["grid", "random", "asha"];

    public static IReadOnlyList<string> MetricNames { get; } = ["val_accuracy", "val_loss"];

    public static IReadOnlyList<string> MetricModes { get; } = ["max", "min"];

    /// <summary>`weights: builtin`: the weights that ship with the model (only built-in models have them).</summary>
    public const string BuiltinWeights = "builtin";

    /// <summary>`weights: random`: seeded random initialisation.</summary>
    public const string RandomWeights = "random";
}
