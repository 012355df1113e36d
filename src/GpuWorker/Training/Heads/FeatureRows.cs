using static TorchSharp.torch;

namespace Cluster.GpuWorker.Training.Heads;

/// <summary>
/// Feature vectors as rows (row-major float32, e.g. a feature set's pooled activations, or flattened [C, H, W] ones),
/// with their class labels (0-based) when they are for training or scoring.
/// </summary>
public sealed class FeatureRows
{
    public FeatureRows(float[] values, int columns, int[]? labels = null)
    {
        ArgumentNullException.ThrowIfNull(values);
        if (columns <= 0 || values.Length % columns != 0)
        {
            throw new ArgumentException($"{values.Length} values do not make rows of {columns} features");
        }
        Values = values;
        Columns = columns;
        Rows = values.Length / columns;
        if (labels is not null)
        {
            if (labels.Length != Rows)
            {
                throw new ArgumentException($"{labels.Length} labels for {Rows} rows");
            }
            int negative = Array.FindIndex(labels, l => l < 0);
            if (negative >= 0)
            {
                throw new ArgumentException($"label {labels[negative]} of row {negative} is negative");
            }
        }
        Labels = labels;
    }

    public float[] Values { get; }

    public int Rows { get; }

    public int Columns { get; }

    public int[]? Labels { get; }

    /// <summary>The labels, or an error saying that these rows have none.</summary>
    public int[] RequireLabels() =>
        Labels ?? throw new InvalidOperationException("these feature rows have no labels: a head is trained and scored on labelled rows");

    /// <summary>The rows as an [N, D] tensor of <paramref name="type"/> (a copy the caller's scope owns).</summary>
    internal Tensor ToTensor(ScalarType type = ScalarType.Float32)
    {
        Tensor values = tensor(Values, [Rows, Columns]);
        return type == ScalarType.Float32 ? values : values.to(type);
    }
}
