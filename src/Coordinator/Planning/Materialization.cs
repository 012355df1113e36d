using System.Globalization;
using Cluster.Coordinator.Specs;

namespace Cluster.Coordinator.Planning;

/// <summary>A feature set that is on the storage (complete or partly extracted), as the budget counts it.</summary>
/// <param name="LastUsedAt">When a sweep or extraction last asked for it; null: before this was recorded.</param>
public sealed record StoredSet(string Key, long Bytes, bool Complete, int RowsDone, DateTime? LastUsedAt);

/// <summary>What the storage holds when a sweep is planned: every stored set, and those a sweep still running needs.</summary>
/// <param name="Pinned">Keys of sets that trials of sweeps still running train on: never evicted, and counted as taken.</param>
public sealed record StorageFacts(IReadOnlyList<StoredSet> Sets, IReadOnlySet<string> Pinned)
{
    public static StorageFacts Empty { get; } = new([], new HashSet<string>(StringComparer.Ordinal));
}

/// <summary>
/// A feature set of a sweep's layout, with what storing it and recomputing it would cost.
/// </summary>
/// <param name="ValuesPerRow">Values per image at the tap (channels for a pooled tap, channels x height x width unpooled).</param>
/// <param name="Dtype">The dtype the layout asks for (bf16 when the prefix runs in bf16).</param>
/// <param name="MustStore">A feature-extractor head trains only on stored features: such a set cannot be recomputed.</param>
/// <param name="RecomputeImages">Images through the frozen prefix if each trial recomputes it instead (every epoch of
/// training and validation, once for a test set), summed over the trials that use it.</param>
/// <param name="KeysByDtype">The set's key at each storage dtype (a rounded copy is another set, with its own key).</param>
public sealed record PrefixCandidate(
    string Key, string Model, string Layer, string Pooling, string DatasetId, int Rows, long ValuesPerRow, string Dtype,
    bool MustStore, long RecomputeImages, int Trials, IReadOnlyDictionary<string, string>? KeysByDtype = null)
{
    public string KeyAt(string dtype) => dtype == Dtype ? Key : KeysByDtype?.GetValueOrDefault(dtype) ?? Key;

    public long BytesAt(string dtype) => Rows * ValuesPerRow * BytesPerValue(dtype);

    internal static int BytesPerValue(string dtype) => dtype == "fp32" ? 4 : 2;
}

public enum PrefixAction
{
    /// <summary>On the storage already (complete, or partial and resumed): used as it is.</summary>
    Cached,

    /// <summary>Extracted once and stored; trials train on it.</summary>
    Store,

    /// <summary>Not stored: each trial runs the frozen prefix on its images every epoch.</summary>
    Recompute,
}

/// <summary>One prefix's decision, with the figures behind it (images through the prefix, bytes on the storage).</summary>
/// <param name="Dtype">How it is stored (for Store and Cached).</param>
/// <param name="Bytes">Bytes it adds to the storage (Store; for a partial set the part still to write).</param>
/// <param name="StoreImages">Images through the prefix if stored: one pass over the images still missing.</param>
public sealed record PrefixDecision(PrefixCandidate Prefix, PrefixAction Action, string Dtype, long Bytes, long StoreImages, string Reason)
{
    public long RecomputeImages => Prefix.RecomputeImages;

    /// <summary>Images through the prefix that this decision costs.</summary>
    public long Images => Action == PrefixAction.Recompute ? Prefix.RecomputeImages : StoreImages;
}

/// <summary>What the planner decided for a sweep's feature sets under its storage budget, and what must be evicted first.</summary>
/// <param name="UsedBytes">Bytes the storage's feature sets take before the sweep.</param>
/// <param name="NewBytes">Bytes the sweep's stored sets add.</param>
/// <param name="Evictions">Sets no running sweep needs, removed (least recently used first) to make room.</param>
public sealed record MaterializationPlan(long? BudgetBytes, long UsedBytes, long NewBytes, IReadOnlyList<PrefixDecision> Decisions, IReadOnlyList<StoredSet> Evictions)
{
    public PrefixDecision For(string key) => Decisions.Single(d => d.Prefix.Key == key);

    /// <summary>
    /// The layout with the decisions applied: a recomputed prefix is dropped from its trials' feature sets (they train
    /// from the images), and a set stored at another dtype than laid out gets that dtype (and so its own key).
    /// </summary>
    public SweepLayout Apply(SweepLayout layout)
    {
        ArgumentNullException.ThrowIfNull(layout);
        var byKey = Decisions.ToDictionary(d => d.Prefix.Key, StringComparer.Ordinal);
        var trials = layout.Trials.Select(t => t with
        {
            Features =
            [
                .. t.Features
                    .Where(f => !byKey.TryGetValue(f.Request.Key.Value, out PrefixDecision? d) || d.Action != PrefixAction.Recompute)
                    .Select(f => byKey.TryGetValue(f.Request.Key.Value, out PrefixDecision? d) && d.Dtype != f.Request.StorageDtype
                        ? (f.Need, f.Request with { StorageDtype = d.Dtype })
                        : f),
            ],
        }).ToList();
        return layout with { Trials = trials };
    }
}

/// <summary>
/// Decides, per frozen prefix of a sweep, whether to store its activations or to recompute them in each trial, under the
/// spec's storage budget (the materialization choice of Nautilus, SIGMOD'22). Pure: the caller gathers the layout's
/// candidates and the storage's facts. The rule:
/// <list type="bullet">
/// <item>A set already stored is used. A feature-extractor's set must be stored (its head trains on stored features).</item>
/// <item>Without a budget every prefix is stored (a stored prefix serves later sweeps too). Under one: storing costs one
/// pass over the images, recomputing a pass every epoch of every trial that uses it; a prefix its trials would run no
/// more than once is recomputed (storing saves nothing).</item>
/// <item>The rest are stored greedily by images saved per byte, while they fit in what the budget leaves after the sets
/// running sweeps need and the sweep's own stored sets; with <c>activations: auto</c> a set that does not fit in fp32
/// is stored in bf16 if that fits (half the bytes, values rounded to 8 bits of mantissa). What does not fit is recomputed.</item>
/// <item>When the sets stored plus the new ones exceed the budget, the sets no running sweep needs are evicted, least
/// recently used first, until the new ones fit.</item>
/// </list>
/// Images through the prefix is the unit of compute: the comparison is between two ways of getting one prefix's
/// activations, so the prefix's own cost per image divides out; ranking prefixes by images saved per byte favours late
/// taps, whose activations are small and whose prefixes cost the most.
/// </summary>
public static class MaterializationPlanner
{
    /// <param name="where">What error messages name: the spec and the budget's line.</param>
    public static MaterializationPlan Decide(IReadOnlyList<PrefixCandidate> candidates, BudgetSpec budget, string where, StorageFacts storage)
    {
        ArgumentNullException.ThrowIfNull(candidates);
        ArgumentNullException.ThrowIfNull(budget);
        ArgumentNullException.ThrowIfNull(storage);
        var stored = storage.Sets.ToDictionary(s => s.Key, StringComparer.Ordinal);
        long used = storage.Sets.Sum(s => s.Bytes);
        // Room: what the budget leaves after what it cannot give back: the sets running sweeps need (here), and the
        // sets of this sweep already stored (taken off as they are found below).
        long? room = budget.StorageBytes - storage.Sets.Where(s => storage.Pinned.Contains(s.Key)).Sum(s => s.Bytes);
        var mine = new HashSet<string>(StringComparer.Ordinal);
        CultureInfo c = CultureInfo.InvariantCulture;

        string StoredDtype(PrefixCandidate p) => budget.Activations is "bf16" or "fp16" ? budget.Activations : p.Dtype;
        var decisions = new Dictionary<string, PrefixDecision>(StringComparer.Ordinal);
        foreach (PrefixCandidate candidate in candidates)
        {
            // Stored at the dtype the budget asks for, or (auto) at either: a bf16 copy a tighter sweep made is used too.
            string[] dtypes = budget.Activations == "auto" ? [candidate.Dtype, "bf16"] : [StoredDtype(candidate)];
            string? dtype = dtypes.FirstOrDefault(d => stored.ContainsKey(candidate.KeyAt(d)));
            if (dtype is not null)
            {
                StoredSet set = stored[candidate.KeyAt(dtype)];
                if (mine.Add(set.Key) && !storage.Pinned.Contains(set.Key))
                {
                    room -= set.Bytes;
                }
                int missing = Math.Max(0, candidate.Rows - set.RowsDone);
                long bytes = missing * candidate.ValuesPerRow * PrefixCandidate.BytesPerValue(dtype);
                room -= bytes;
                decisions[candidate.Key] = new PrefixDecision(candidate, PrefixAction.Cached, dtype, bytes, missing,
                    set.Complete ? "stored already" : $"partly stored: {missing.ToString("N0", c)} images still to extract");
            }
        }
        foreach (PrefixCandidate candidate in candidates.Where(p => p.MustStore && !decisions.ContainsKey(p.Key)))
        {
            string dtype = StoredDtype(candidate);
            long bytes = candidate.BytesAt(dtype);
            room -= bytes;
            decisions[candidate.Key] = new PrefixDecision(candidate, PrefixAction.Store, dtype, bytes, candidate.Rows,
                "a feature-extractor head trains on stored features");
        }
        if (room < 0)
        {
            throw new SpecException(
                $"{where}: budget.storage {Size(budget.StorageBytes!.Value)} cannot hold the feature sets this sweep needs stored " +
                $"({Size(budget.StorageBytes.Value - room.Value)} with what running sweeps keep); raise it, or use fewer feature-extractor configurations");
        }
        // The optional ones, best saving per byte first.
        IEnumerable<PrefixCandidate> optional = candidates.Where(p => !decisions.ContainsKey(p.Key))
            .OrderByDescending(p => (double)(p.RecomputeImages - p.Rows) / Math.Max(1, p.BytesAt(StoredDtype(p))))
            .ThenBy(p => p.Key, StringComparer.Ordinal);
        foreach (PrefixCandidate candidate in optional)
        {
            string dtype = StoredDtype(candidate);
            long bytes = candidate.BytesAt(dtype);
            string costs = $"storing: {candidate.Rows.ToString("N0", c)} images through the prefix, recomputing: {candidate.RecomputeImages.ToString("N0", c)}";
            PrefixDecision decision;
            if (room is null)
            {
                // Without a budget everything is stored: a stored prefix also serves later sweeps.
                decision = new(candidate, PrefixAction.Store, dtype, bytes, candidate.Rows, $"{costs}; no storage budget: kept for later sweeps too");
            }
            else if (candidate.RecomputeImages <= candidate.Rows)
            {
                decision = new(candidate, PrefixAction.Recompute, dtype, 0, candidate.Rows, $"{costs}: storing saves nothing in this sweep");
            }
            else if (bytes <= room)
            {
                decision = new(candidate, PrefixAction.Store, dtype, bytes, candidate.Rows, $"{costs}; fits the budget ({Size(room.Value)} left)");
            }
            else if (budget.Activations == "auto" && dtype == "fp32" && candidate.BytesAt("bf16") <= room)
            {
                bytes = candidate.BytesAt("bf16");
                decision = new(candidate, PrefixAction.Store, "bf16", bytes, candidate.Rows,
                    $"{costs}; fits the budget only in bf16 ({Size(candidate.BytesAt("fp32"))} in fp32, {Size(room.Value)} left)");
            }
            else
            {
                decision = new(candidate, PrefixAction.Recompute, dtype, 0, candidate.Rows,
                    $"{costs}; {Size(bytes)} does not fit the budget ({Size(Math.Max(0, room.Value))} left)");
            }
            room -= decision.Action == PrefixAction.Store ? decision.Bytes : 0;
            decisions[candidate.Key] = decision;
        }

        long added = decisions.Values.Where(d => d.Action != PrefixAction.Recompute).Sum(d => d.Bytes);
        mine.UnionWith(decisions.Values.Where(d => d.Action == PrefixAction.Store).Select(d => d.Prefix.KeyAt(d.Dtype)));
        IReadOnlyList<StoredSet> evictions = budget.StorageBytes is long limit ? Evictions(storage, mine, added, limit) : [];
        return new MaterializationPlan(budget.StorageBytes, used, added, [.. candidates.Select(p => decisions[p.Key])], evictions);
    }

    /// <summary>The sets to evict so that <paramref name="addedBytes"/> more fit in <paramref name="budgetBytes"/>: those
    /// neither pinned nor wanted, least recently used first (what the coordinator service removes before extracting).</summary>
    public static IReadOnlyList<StoredSet> Evictions(StorageFacts storage, IReadOnlySet<string> wanted, long addedBytes, long budgetBytes)
    {
        ArgumentNullException.ThrowIfNull(storage);
        ArgumentNullException.ThrowIfNull(wanted);
        long over = storage.Sets.Sum(s => s.Bytes) + addedBytes - budgetBytes;
        var evictions = new List<StoredSet>();
        foreach (StoredSet set in storage.Sets
            .Where(s => !storage.Pinned.Contains(s.Key) && !wanted.Contains(s.Key))
            .OrderBy(s => s.LastUsedAt ?? DateTime.MinValue).ThenBy(s => s.Key, StringComparer.Ordinal))
        {
            if (over <= 0)
            {
                break;
            }
            evictions.Add(set);
            over -= set.Bytes;
        }
        return evictions;
    }

    public static string Size(long bytes) => bytes switch
    {
        >= 1L << 30 => string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 30):0.##} GiB"),
        >= 1L << 20 => string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 20):0.#} MiB"),
        >= 1L << 10 => string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 10):0.#} KiB"),
        _ => string.Create(CultureInfo.InvariantCulture, $"{bytes} B"),
    };
}
