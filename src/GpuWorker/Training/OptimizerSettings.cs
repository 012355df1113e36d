using Cluster.GpuWorker.Models;

namespace Cluster.GpuWorker.Training;

/// <summary>The optimizers a trial may name (DESIGN.md's sweep spec `optimizer`).</summary>
public enum OptimizerKind
{
    /// <summary>SGD with momentum: the reference material's fine-tuning recipe (lr 1e-4, momentum 0.9).</summary>
    Sgd,
    Adam,
    AdamW,
}

/// <summary>An optimizer and its hyperparameters, checked once; <see cref="Parse"/> is the one parser of the names.</summary>
/// <param name="BackboneLearningRate">When set, the backbone's trainable layers step at this rate and the classifier at
/// <paramref name="LearningRate"/> (fine-tune-all: a lower rate for the pretrained layers than for the new head).</param>
public sealed record OptimizerSettings(OptimizerKind Kind, double LearningRate, double Momentum = 0.9, double WeightDecay = 0, double? BackboneLearningRate = null)
{
    private static readonly NameTable<OptimizerKind> s_names = new("optimizer", "a trial", new Dictionary<string, OptimizerKind>(StringComparer.Ordinal)
    {
        ["sgd"] = OptimizerKind.Sgd,
        ["adam"] = OptimizerKind.Adam,
        ["adamw"] = OptimizerKind.AdamW,
    });

    public static IReadOnlyCollection<string> Names => s_names.Names;

    public static OptimizerKind Parse(string name) => s_names.Parse(name);

    public static string NameOf(OptimizerKind kind) => s_names.NameOf(kind);

    /// <summary>The first value out of range, as "field value: what is allowed", or null.</summary>
    public string? Problem() =>
        !(LearningRate > 0) || !double.IsFinite(LearningRate) ? $"learning rate {LearningRate}: must be a positive number"
        : Momentum is < 0 or >= 1 || double.IsNaN(Momentum) ? $"momentum {Momentum}: must be in [0, 1)"
        : !(WeightDecay >= 0) || !double.IsFinite(WeightDecay) ? $"weight decay {WeightDecay}: must be 0 or more"
        : BackboneLearningRate is double b && (!(b > 0) || !double.IsFinite(b)) ? $"backbone learning rate {b}: must be a positive number"
        : null;
}
