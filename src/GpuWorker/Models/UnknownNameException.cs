namespace Cluster.GpuWorker.Models;

/// <summary>An unknown architecture or layer name: the message lists the valid names, closest first.</summary>
public sealed class UnknownNameException : Exception
{
    public UnknownNameException(string kind, string given, string where, IEnumerable<string> valid)
        : base(Describe(kind, given, where, valid))
    {
        Given = given;
    }

    public string Given { get; }

    private static string Describe(string kind, string given, string where, IEnumerable<string> valid)
    {
        List<string> ranked = valid.Distinct(StringComparer.Ordinal)
            .OrderBy(v => Distance(given.ToLowerInvariant(), v.ToLowerInvariant()))
            .ThenBy(v => v, StringComparer.Ordinal)
            .ToList();
        string shown = string.Join(", ", ranked.Take(12));
        string more = ranked.Count > 12 ? $", ... ({ranked.Count - 12} more)" : "";
        return $"unknown {kind} '{given}' for {where}; valid (closest first): {shown}{more}";
    }

    /// <summary>Levenshtein distance, with a bonus for prefix and substring matches (users type partial names).</summary>
    private static int Distance(string a, string b)
    {
        if (b.StartsWith(a, StringComparison.Ordinal) || a.StartsWith(b, StringComparison.Ordinal))
        {
            return Math.Abs(a.Length - b.Length) / 4;
        }
        var previous = new int[b.Length + 1];
        var current = new int[b.Length + 1];
        for (int j = 0; j <= b.Length; j++)
        {
            previous[j] = j;
        }
        for (int i = 1; i <= a.Length; i++)
        {
            current[0] = i;
            for (int j = 1; j <= b.Length; j++)
            {
                int cost = a[i - 1] == b[j - 1] ? 0 : 1;
                current[j] = Math.Min(Math.Min(current[j - 1] + 1, previous[j] + 1), previous[j - 1] + cost);
            }
            (previous, current) = (current, previous);
        }
        return previous[b.Length];
    }
}
