namespace Cluster.GpuWorker.Training.Heads;

/// <summary>
/// A classifier trained on feature vectors (the `feature-extractor` strategy's head). <see cref="Train"/> fits one of
/// the <see cref="HeadKind"/>s; the trained head gives class probabilities for new rows.
/// </summary>
public abstract class FeatureHead : IDisposable
{
    protected FeatureHead(int featureCount, int classCount)
    {
        FeatureCount = featureCount;
        ClassCount = classCount;
    }

    public abstract HeadKind Kind { get; }

    /// <summary>The length of the feature vectors it was trained on.</summary>
    public int FeatureCount { get; }

    public int ClassCount { get; }

    /// <summary>Trains a head of <paramref name="kind"/> on labelled rows with labels in [0, <paramref name="classCount"/>).</summary>
    public static FeatureHead Train(HeadKind kind, FeatureRows train, int classCount, HeadSettings? settings = null)
    {
        ArgumentNullException.ThrowIfNull(train);
        settings ??= new HeadSettings();
        int[] labels = train.RequireLabels();
        if (classCount < 2)
        {
            throw new ArgumentException($"{classCount} class(es): a classifier needs at least 2");
        }
        int outOfRange = Array.FindIndex(labels, l => l >= classCount);
        if (outOfRange >= 0)
        {
            throw new ArgumentException($"label {labels[outOfRange]} of row {outOfRange} is not below the {classCount} classes");
        }
        if (train.Rows == 0)
        {
            throw new ArgumentException("no training rows");
        }
        if (settings.Problem() is string problem)
        {
            throw new ArgumentException($"head {HeadKinds.NameOf(kind)}: {problem}");
        }
        return kind switch
        {
            HeadKind.Logistic => LogisticHead.Fit(train, classCount, settings),
            HeadKind.Mlp => MlpHead.Fit(train, classCount, settings),
            HeadKind.Knn => new KnnHead(train, classCount, settings.Neighbours),
            HeadKind.Sdca => SdcaHead.Fit(train, classCount, settings),
            _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
        };
    }

    /// <summary>Class probabilities, [rows × classes] row-major.</summary>
    public double[] PredictProbabilities(FeatureRows rows)
    {
        ArgumentNullException.ThrowIfNull(rows);
        if (rows.Columns != FeatureCount)
        {
            throw new ArgumentException($"rows of {rows.Columns} features for a head trained on {FeatureCount}");
        }
        return rows.Rows == 0 ? [] : Probabilities(rows);
    }

    /// <summary>The most probable class of each row (the lowest class index on a tie).</summary>
    public int[] Predict(FeatureRows rows)
    {
        double[] probabilities = PredictProbabilities(rows);
        var predicted = new int[rows.Rows];
        for (int r = 0; r < predicted.Length; r++)
        {
            int best = 0;
            for (int c = 1; c < ClassCount; c++)
            {
                if (probabilities[r * ClassCount + c] > probabilities[r * ClassCount + best])
                {
                    best = c;
                }
            }
            predicted[r] = best;
        }
        return predicted;
    }

    /// <summary>The fraction of labelled rows predicted right.</summary>
    public double Accuracy(FeatureRows rows)
    {
        int[] labels = rows.RequireLabels();
        int[] predicted = Predict(rows);
        return labels.Length == 0 ? 0 : labels.Zip(predicted).Count(p => p.First == p.Second) / (double)labels.Length;
    }

    protected abstract double[] Probabilities(FeatureRows rows);

    /// <summary>What a checkpoint keeps of the trained head, as named tensors (the caller disposes them).</summary>
    public abstract IReadOnlyList<(string Name, TorchSharp.torch.Tensor Value)> ToCheckpointTensors();

    public virtual void Dispose() => GC.SuppressFinalize(this);
}
