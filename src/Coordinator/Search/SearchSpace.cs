using Cluster.Coordinator.Specs;

namespace Cluster.Coordinator.Search;

/// <summary>
/// The trials a sweep spec describes, by configuration number. A grid enumerates every combination of the fields'
/// lists (the last field in the spec's order varying fastest, like nested loops) and draws each distribution once per
/// combination, as Ray Tune's grid_search with sampled fields does; a random search draws every field (a list or choice
/// uniformly, uniform and log_uniform as named). Draws are seeded by the sweep's seed and the configuration number, so
/// configuration n is the same trial on every call and after a coordinator restart: a search method only has to
/// remember numbers.
/// </summary>
public sealed class SearchSpace
{
    private readonly SweepSpec _spec;
    private readonly ISpecValue[] _listed;

    public SearchSpace(SweepSpec spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        _spec = spec;
        _listed = spec.Hyperparameters.Where(f => f.Count is not null).ToArray();
        long size = 1;
        foreach (ISpecValue field in _listed)
        {
            size = checked(size * field.Count!.Value);
        }
        GridSize = size;
    }

    /// <summary>How many combinations of the lists a grid enumerates (distributions count once: they are drawn).</summary>
    public long GridSize { get; }

    /// <summary>
    /// Grid configuration <paramref name="number"/>: combination number mod <see cref="GridSize"/>, its distributions drawn
    /// for this number (so number + GridSize is the same combination with fresh draws).
    /// </summary>
    public TrialChoice GridPoint(long number, long seed)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(number);
        var digits = new Dictionary<string, int>(StringComparer.Ordinal);
        long rest = number % GridSize;
        for (int i = _listed.Length - 1; i >= 0; i--)
        {
            int count = _listed[i].Count!.Value;
            digits[_listed[i].Field] = (int)(rest % count);
            rest /= count;
        }
        return _spec.Trial(new Picker(digits, new Random(StableSeed(seed, number))));
    }

    /// <summary>Random draw <paramref name="number"/> of the sweep seeded with <paramref name="seed"/>: the same pair gives the same trial.</summary>
    public TrialChoice Sample(long number, long seed) => _spec.Trial(new Picker(null, new Random(StableSeed(seed, number))));

    /// <summary>A seed for draw <paramref name="number"/> that does not depend on the process (HashCode does).</summary>
    private static int StableSeed(long seed, long number)
    {
        // splitmix64's finaliser over the pair: nearby numbers give unrelated seeds.
        ulong z = unchecked((ulong)seed * 0x9E3779B97F4A7C15UL + (ulong)number + 1);
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        z ^= z >> 31;
        return (int)(z & int.MaxValue);
    }

    /// <summary>A grid's digit where it has one for the field, otherwise a draw.</summary>
    private sealed class Picker(Dictionary<string, int>? digits, Random random) : ISpecValuePicker
    {
        public T Pick<T>(SpecValue<T> value)
            where T : notnull
        {
            if (!value.IsDistribution)
            {
                return digits is not null && digits.TryGetValue(value.Field, out int digit)
                    ? value.Values[digit]
                    : value.Values[random.Next(value.Values.Count)];
            }
            double u = random.NextDouble();
            double x = value.Kind == SpecValueKind.LogUniform
                ? Math.Exp(Math.Log(value.Low) + u * (Math.Log(value.High) - Math.Log(value.Low)))
                : value.Low + u * (value.High - value.Low);
            // Whole-number fields (epochs, batch size, input size, seed) draw a real and round it, within the bounds.
            if (typeof(T) == typeof(double))
            {
                return (T)(object)x;
            }
            double whole = Math.Clamp(Math.Round(x), Math.Ceiling(value.Low), Math.Floor(value.High));
            object drawn = typeof(T) == typeof(int) ? (int)whole
                : typeof(T) == typeof(long) ? (object)(long)whole
                : throw new InvalidOperationException($"{value.Field} has no numeric distribution");
            return (T)drawn;
        }
    }
}
