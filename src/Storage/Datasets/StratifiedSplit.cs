namespace Cluster.Storage.Datasets;

/// <summary>
/// Holds out a fraction of a dataset for validation, class by class (each class keeps its share in both parts), in an
/// order drawn from a seed: the same labels, fraction and seed always give the same split, on every machine (the
/// permutation is this class's own, not a library's whose algorithm may change).
/// </summary>
public static class StratifiedSplit
{
    /// <summary>Row positions of the kept and the held-out rows, each ascending.</summary>
    /// <param name="labels">Each row's class index.</param>
    /// <param name="fraction">The share held out, in (0, 1); each class holds out round(count × fraction) rows, at least one when it has two or more.</param>
    public static (int[] Kept, int[] HeldOut) Split(IReadOnlyList<int> labels, double fraction, long seed)
    {
        ArgumentNullException.ThrowIfNull(labels);
        if (!(fraction > 0 && fraction < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(fraction), fraction, "a validation fraction must be in (0, 1)");
        }
        var kept = new List<int>(labels.Count);
        var heldOut = new List<int>();
        foreach (IGrouping<int, int> rows in Enumerable.Range(0, labels.Count).GroupBy(i => labels[i]).OrderBy(g => g.Key))
        {
            int[] order = [.. rows];
            // Fisher-Yates with SplitMix64, seeded per class so adding a class never reshuffles the others.
            ulong state = unchecked((ulong)seed * 0x9E3779B97F4A7C15UL + (ulong)rows.Key + 1);
            for (int i = order.Length - 1; i > 0; i--)
            {
                int j = (int)(Next(ref state) % (ulong)(i + 1));
                (order[i], order[j]) = (order[j], order[i]);
            }
            int holdOut = order.Length < 2 ? 0 : Math.Clamp((int)Math.Round(order.Length * fraction, MidpointRounding.AwayFromZero), 1, order.Length - 1);
            heldOut.AddRange(order.Take(holdOut));
            kept.AddRange(order.Skip(holdOut));
        }
        kept.Sort();
        heldOut.Sort();
        return ([.. kept], [.. heldOut]);
    }

    private static ulong Next(ref ulong state)
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
