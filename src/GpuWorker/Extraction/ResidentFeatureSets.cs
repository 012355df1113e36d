namespace Cluster.GpuWorker.Extraction;

/// <summary>
/// The feature sets a worker keeps in memory between jobs (locality): the trials of one frozen prefix each train on
/// the same cached activations, often one after another on the same worker (a sweep's trials of one cutoff, the
/// segments of one trial), and reading a set again from the shared volume costs its whole size each time (a
/// layer3 set of 60,000 Fashion-MNIST images at 64 pixels is 245 MB; at 224 pixels a few thousand images already
/// are). So loaded sets stay resident, least recently used evicted first, within a byte budget; a set is never
/// evicted while a job holds it (a lease). The sets are immutable under their keys (the key hashes everything that
/// made them), so a resident copy is always the stored one. Safe for concurrent jobs: one load per key at a time.
/// </summary>
public sealed class ResidentFeatureSets : IDisposable
{
    private readonly long _budgetBytes;
    private readonly Func<string, CancellationToken, Task<CachedFeatures>> _load;
    private readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Task<CachedFeatures>> _loading = new(StringComparer.Ordinal);
    private readonly object _gate = new();
    private long _clock;
    private bool _disposed;

    /// <param name="budgetBytes">Bytes of features kept once no job holds them; 0 keeps none (every job loads its own).</param>
    /// <param name="load">Reads a complete set from storage (<see cref="FeatureShardRepair.LoadAsync"/>, which heals damaged shards).</param>
    public ResidentFeatureSets(long budgetBytes, Func<string, CancellationToken, Task<CachedFeatures>> load)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(budgetBytes);
        ArgumentNullException.ThrowIfNull(load);
        _budgetBytes = budgetBytes;
        _load = load;
    }

    public long BudgetBytes => _budgetBytes;

    /// <summary>Reads from storage since the start (a set loaded once and then reused counts once).</summary>
    public int Loads { get; private set; }

    /// <summary>Leases served from memory, without reading storage.</summary>
    public int Hits { get; private set; }

    /// <summary>The resident sets' keys, most recently used first (what the heartbeat reports).</summary>
    public IReadOnlyList<string> Keys
    {
        get
        {
            lock (_gate)
            {
                return [.. _entries.OrderByDescending(e => e.Value.LastUsed).Select(e => e.Key)];
            }
        }
    }

    /// <summary>Bytes of features resident now, held or not.</summary>
    public long Bytes
    {
        get
        {
            lock (_gate)
            {
                return _entries.Values.Sum(e => e.Bytes);
            }
        }
    }

    /// <summary>The set, from memory or read once from storage; it stays resident at least until the lease is disposed.</summary>
    public async Task<FeatureLease> AcquireAsync(string key, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(key);
        while (true)
        {
            Task<CachedFeatures>? loading;
            bool mine = false;
            lock (_gate)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                if (_entries.TryGetValue(key, out Entry? entry))
                {
                    entry.Leases++;
                    entry.LastUsed = ++_clock;
                    Hits++;
                    return new FeatureLease(this, key, entry.Features);
                }
                if (!_loading.TryGetValue(key, out loading))
                {
                    loading = _load(key, ct);
                    _loading[key] = loading;
                    mine = true;
                }
            }
            if (!mine)
            {
                // Another job is reading it: wait for that read, then take it from memory (or read it ourselves, if it failed).
                try
                {
                    await loading.WaitAsync(ct);
                }
                catch (Exception) when (!ct.IsCancellationRequested)
                {
                }
                continue;
            }
            CachedFeatures features;
            try
            {
                features = await loading;
            }
            catch
            {
                lock (_gate)
                {
                    _loading.Remove(key);
                }
                throw;
            }
            // The set becomes resident in the same step as it stops loading: a waiter woken in between would find
            // neither and read the set a second time.
            lock (_gate)
            {
                _loading.Remove(key);
                Loads++;
                var entry = new Entry(features, SizeOf(features)) { Leases = 1, LastUsed = ++_clock };
                _entries[key] = entry;
                EvictOverBudget();
                return new FeatureLease(this, key, features);
            }
        }
    }

    private void Release(string key)
    {
        lock (_gate)
        {
            if (_entries.TryGetValue(key, out Entry? entry))
            {
                entry.Leases--;
                EvictOverBudget();
            }
        }
    }

    /// <summary>Least recently used first, only sets no job holds, until what stays fits the budget.</summary>
    private void EvictOverBudget()
    {
        long bytes = _entries.Values.Sum(e => e.Bytes);
        foreach ((string key, Entry entry) in _entries.Where(e => e.Value.Leases == 0).OrderBy(e => e.Value.LastUsed).ToList())
        {
            if (bytes <= _budgetBytes)
            {
                break;
            }
            _entries.Remove(key);
            entry.Features.Dispose();
            bytes -= entry.Bytes;
        }
    }

    private static long SizeOf(CachedFeatures features) =>
        features.Features.NumberOfElements * features.Features.ElementSize + features.Rows.LongLength * sizeof(long);

    public void Dispose()
    {
        lock (_gate)
        {
            _disposed = true;
            foreach (Entry entry in _entries.Values)
            {
                entry.Features.Dispose();
            }
            _entries.Clear();
        }
    }

    private sealed class Entry(CachedFeatures features, long bytes)
    {
        public CachedFeatures Features { get; } = features;

        public long Bytes { get; } = bytes;

        public int Leases { get; set; }

        public long LastUsed { get; set; }
    }

    /// <summary>A job's hold on a resident set: the features stay valid (not evicted, not disposed) until this is disposed.</summary>
    public sealed class FeatureLease : IDisposable
    {
        private readonly ResidentFeatureSets _owner;
        private readonly string _key;
        private bool _released;

        internal FeatureLease(ResidentFeatureSets owner, string key, CachedFeatures features)
        {
            _owner = owner;
            _key = key;
            Features = features;
        }

        public CachedFeatures Features { get; }

        public void Dispose()
        {
            if (!_released)
            {
                _released = true;
                _owner.Release(_key);
            }
        }
    }
}
