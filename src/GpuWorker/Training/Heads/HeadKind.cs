using Cluster.GpuWorker.Models;

namespace Cluster.GpuWorker.Training.Heads;

/// <summary>
/// The classifiers the `feature-extractor` strategy trains on cached features (case 2 of the reference material: the
/// pretrained network as a feature extractor, then another classifier).
/// </summary>
public enum HeadKind
{
    /// <summary>Softmax (multinomial logistic) regression with L2 regularisation, fitted to its optimum.</summary>
    Logistic,

    /// <summary>The reference's top model: Flatten, Dense 256 ReLU, Dropout 0.5, Dense to the classes.</summary>
    Mlp,

    /// <summary>k nearest neighbours (Euclidean, majority vote).</summary>
    Knn,

    /// <summary>ML.NET's SDCA maximum-entropy trainer: the "other machine-learning algorithm".</summary>
    Sdca,
}

/// <summary>The spec's names of the heads, and the one parser of them.</summary>
public static class HeadKinds
{
    private static readonly NameTable<HeadKind> s_table = new("head", "strategy feature-extractor", new Dictionary<string, HeadKind>(StringComparer.Ordinal)
    {
        ["logistic"] = HeadKind.Logistic,
        ["mlp"] = HeadKind.Mlp,
        ["knn"] = HeadKind.Knn,
        ["sdca"] = HeadKind.Sdca,
    });

    public static IReadOnlyCollection<string> Names => s_table.Names;

    public static HeadKind Parse(string name) => s_table.Parse(name);

    public static string NameOf(HeadKind kind) => s_table.NameOf(kind);
}
