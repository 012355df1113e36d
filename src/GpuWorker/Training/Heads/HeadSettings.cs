namespace Cluster.GpuWorker.Training.Heads;

/// <summary>
/// How a head is trained. Defaults are those of the usual libraries (scikit-learn's C = 1 and k = 5; the reference
/// material's top model: 256 hidden units, dropout 0.5), so a spec that names only the head gets what its users expect.
/// </summary>
public sealed record HeadSettings
{
    /// <summary>logistic: inverse L2 strength, as scikit-learn's C (objective C·Σ cross-entropy + ½‖W‖², bias free).</summary>
    public double InverseRegularization { get; init; } = 1.0;

    /// <summary>knn: how many neighbours vote.</summary>
    public int Neighbours { get; init; } = 5;

    /// <summary>mlp: hidden units of the Dense ReLU layer.</summary>
    public int HiddenUnits { get; init; } = 256;

    /// <summary>mlp: dropout after the hidden layer while training.</summary>
    public double Dropout { get; init; } = 0.5;

    /// <summary>mlp: passes over the training rows; sdca: the trainer's maximum number of iterations.</summary>
    public int Epochs { get; init; } = 30;

    /// <summary>mlp: rows per optimiser step.</summary>
    public int BatchSize { get; init; } = 64;

    /// <summary>mlp: Adam's learning rate.</summary>
    public double LearningRate { get; init; } = 1e-3;

    /// <summary>mlp: decoupled weight decay (AdamW); 0 is plain Adam.</summary>
    public double WeightDecay { get; init; }

    /// <summary>Initial weights, shuffling and dropout (mlp) and the trainer's seed (sdca): the same seed, the same head.</summary>
    public long Seed { get; init; }

    /// <summary>The first setting out of range, as "field value: what is allowed", or null.</summary>
    public string? Problem() =>
        InverseRegularization <= 0 || !double.IsFinite(InverseRegularization) ? $"C {InverseRegularization}: must be a positive number"
        : Neighbours <= 0 ? $"neighbours {Neighbours}: must be at least 1"
        : HiddenUnits <= 0 ? $"hidden units {HiddenUnits}: must be at least 1"
        : Dropout is < 0 or >= 1 || double.IsNaN(Dropout) ? $"dropout {Dropout}: must be in [0, 1)"
        : Epochs <= 0 ? $"epochs {Epochs}: must be at least 1"
        : BatchSize <= 0 ? $"batch size {BatchSize}: must be at least 1"
        : LearningRate <= 0 || !double.IsFinite(LearningRate) ? $"learning rate {LearningRate}: must be a positive number"
        : WeightDecay < 0 || !double.IsFinite(WeightDecay) ? $"weight decay {WeightDecay}: must be 0 or more"
        : null;
}
