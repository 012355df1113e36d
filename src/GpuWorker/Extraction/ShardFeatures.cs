namespace Cluster.GpuWorker.Extraction;

/// <summary>
/// The features of one shard as lanes produce them: each batch's rows are stored at their place in the shard's row
/// range, so batches may finish in any order and the result is still in row order. Thread-safe for
/// <see cref="Store"/> from several lanes (their rows never overlap).
/// </summary>
public sealed class ShardFeatures(long rowStart, int rowCount)
{
    private readonly object _gate = new();
    private readonly bool[] _present = new bool[rowCount];
    private float[]? _values;
    private long[]? _shape;
    private int _length;

    /// <summary>Stores the features of <paramref name="rows"/> (row ids, each in the shard's range), one per row, each of <paramref name="shape"/>.</summary>
    public void Store(IReadOnlyList<long> rows, long[] shape, ReadOnlySpan<float> values)
    {
        ArgumentNullException.ThrowIfNull(rows);
        ArgumentNullException.ThrowIfNull(shape);
        float[] target;
        int length;
        lock (_gate)
        {
            if (_shape is null)
            {
                _shape = shape;
                _length = checked((int)shape.Aggregate(1L, (a, b) => a * b));
                _values = new float[(long)rowCount * _length];
            }
            else if (!_shape.AsSpan().SequenceEqual(shape))
            {
                throw new InvalidOperationException($"features of shape [{string.Join(", ", shape)}] after [{string.Join(", ", _shape)}]");
            }
            target = _values!;
            length = _length;
        }
        if (values.Length != rows.Count * length)
        {
            throw new ArgumentException($"{values.Length} values for {rows.Count} rows of {length} features", nameof(values));
        }
        for (int i = 0; i < rows.Count; i++)
        {
            long offset = rows[i] - rowStart;
            if (offset < 0 || offset >= rowCount)
            {
                throw new ArgumentOutOfRangeException(nameof(rows), $"row {rows[i]} is outside [{rowStart}, {rowStart + rowCount})");
            }
            values.Slice(i * length, length).CopyTo(target.AsSpan((int)offset * length, length));
            _present[offset] = true;
        }
    }

    /// <summary>
    /// The stored rows in ascending order, with their features packed at the front of one array (moved in place:
    /// no second copy of the shard), and the shape of one row's features ([0] when no row was stored).
    /// </summary>
    public (float[] Values, long[] Rows, long[] Shape) Compact()
    {
        lock (_gate)
        {
            if (_values is null)
            {
                return ([], [], [0]);
            }
            var rows = new List<long>(rowCount);
            for (int offset = 0; offset < rowCount; offset++)
            {
                if (_present[offset])
                {
                    // A row only ever moves towards the front, onto a slot already read: safe in place.
                    _values.AsSpan(offset * _length, _length).CopyTo(_values.AsSpan(rows.Count * _length, _length));
                    rows.Add(rowStart + offset);
                }
            }
            return (_values, rows.ToArray(), _shape!);
        }
    }
}
