using System.Text.Json;

namespace Cluster.Coordinator.Search;

/// <summary>ASHA's settings: rungs from <paramref name="MinEpochs"/> up to <paramref name="MaxEpochs"/>, each rung keeping 1/<paramref name="Reduction"/> of the trials that reach it.</summary>
public sealed record AshaSettings(int MinEpochs, int MaxEpochs, double Reduction, int MaxTrials, int Parallelism, MetricGoal Goal);

/// <summary>
/// Asynchronous successive halving (Li et al., "A System for Massively Parallel Hyperparameter Tuning", 2020). Rungs are
/// epoch counts: min_epochs × reduction^k, the last one max_epochs. Whenever a slot is free (a trial reported at its
/// rung, or failed), the method promotes the best trial of the highest rung that has one to promote (a trial is
/// promotable from a rung once it is in that rung's top 1/reduction), and otherwise starts a new trial at the bottom
/// rung; so no worker waits for a rung to fill. A trial not promoted stays paused at its rung (it may still be
/// promoted as more trials arrive) and is closed when the search ends. A trial blocked on its features holds no slot;
/// once unblocked it goes before any promotion or new trial (it was chosen already).
/// </summary>
public sealed class AshaSearch : ISearchMethod
{
    private readonly AshaSettings _settings;
    private State _state;

    public AshaSearch(AshaSettings settings)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentOutOfRangeException.ThrowIfLessThan(settings.MinEpochs, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(settings.MaxEpochs, settings.MinEpochs);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(settings.Reduction, 1.0);
        ArgumentOutOfRangeException.ThrowIfLessThan(settings.MaxTrials, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(settings.Parallelism, 1);
        _settings = settings;
        RungEpochs = Rungs(settings.MinEpochs, settings.MaxEpochs, settings.Reduction);
        _state = new State { Rungs = RungEpochs.Select(_ => new List<RungEntry>()).ToList() };
    }

    /// <summary>The epochs of each rung, lowest first; the last is max_epochs.</summary>
    public IReadOnlyList<int> RungEpochs { get; }

    /// <summary>
    /// min × reduction^k for k below floor(log_reduction(max / min)), then max itself: with min 1, max 9 and reduction 3
    /// the rungs are 1, 3, 9; with max 10 they are 1, 3, 10 (no rung of one extra epoch just below the top).
    /// </summary>
    public static IReadOnlyList<int> Rungs(int minEpochs, int maxEpochs, double reduction)
    {
        int top = (int)Math.Floor(Math.Log((double)maxEpochs / minEpochs, reduction) + 1e-9);
        var rungs = new List<int>();
        for (int k = 0; k < top; k++)
        {
            int epochs = (int)Math.Round(minEpochs * Math.Pow(reduction, k));
            if (rungs.Count == 0 || epochs > rungs[^1])
            {
                rungs.Add(epochs);
            }
        }
        if (rungs.Count == 0 || maxEpochs > rungs[^1])
        {
            rungs.Add(maxEpochs);
        }
        return rungs;
    }

    public IReadOnlyList<SearchOperation> Start() => _state.Created == 0 ? Fill([]) : [];

    public IReadOnlyList<SearchOperation> TrialReported(int trial, double metric)
    {
        if (!_state.Training.Remove(trial, out int rung))
        {
            return [];
        }
        double score = _settings.Goal == MetricGoal.Maximize ? metric : -metric;
        _state.Rungs[rung].Add(new RungEntry { Trial = trial, Score = double.IsNaN(score) ? double.NegativeInfinity : score });
        var operations = new List<SearchOperation>();
        if (rung == RungEpochs.Count - 1)
        {
            _state.Closed.Add(trial);
            operations.Add(new CloseTrial(trial));
        }
        return Fill(operations);
    }

    public IReadOnlyList<SearchOperation> TrialFailed(int trial)
    {
        if (!(_state.Training.Remove(trial) | _state.Blocked.Remove(trial) | _state.Ready.Remove(trial)))
        {
            return [];
        }
        _state.Closed.Add(trial);
        return Fill([]);
    }

    public IReadOnlyList<SearchOperation> TrialBlocked(int trial)
    {
        if (!_state.Training.Remove(trial, out int rung))
        {
            return [];
        }
        _state.Blocked[trial] = rung;
        return Fill([]);
    }

    public IReadOnlyList<SearchOperation> TrialUnblocked(int trial)
    {
        if (!_state.Blocked.Remove(trial, out int rung))
        {
            return [];
        }
        _state.Ready[trial] = rung;
        return Fill([]);
    }

    public string Snapshot() => JsonSerializer.Serialize(_state, SearchJson.Options);

    public void Restore(string snapshot)
    {
        State state = JsonSerializer.Deserialize<State>(snapshot, SearchJson.Options) ?? throw new ArgumentException("an empty snapshot", nameof(snapshot));
        if (state.Rungs.Count != RungEpochs.Count)
        {
            throw new ArgumentException($"the snapshot has {state.Rungs.Count} rungs, these settings {RungEpochs.Count}", nameof(snapshot));
        }
        _state = state;
    }

    private List<SearchOperation> Fill(List<SearchOperation> operations)
    {
        while (_state.Training.Count < _settings.Parallelism)
        {
            if (_state.Ready.Count > 0)
            {
                // Already chosen (created or promoted) before it blocked: it goes first, lowest trial number first.
                (int ready, int readyRung) = _state.Ready.MinBy(r => r.Key);
                _state.Ready.Remove(ready);
                _state.Training[ready] = readyRung;
                operations.Add(new TrainUntil(ready, RungEpochs[readyRung]));
            }
            else if (TryPromote() is (int trial, int rung))
            {
                _state.Training[trial] = rung;
                operations.Add(new TrainUntil(trial, RungEpochs[rung]));
            }
            else if (_state.Created < _settings.MaxTrials)
            {
                int created = _state.Created++;
                _state.Training[created] = 0;
                operations.Add(new CreateTrial(created, created));
                operations.Add(new TrainUntil(created, RungEpochs[0]));
            }
            else
            {
                break;
            }
        }
        if (_state.Training.Count == 0 && _state.Blocked.Count == 0 && _state.Ready.Count == 0 && !_state.Completed)
        {
            // Nothing trains and nothing can start: the paused trials will never be promoted now.
            foreach (int paused in _state.Rungs.SelectMany(r => r).Where(e => !e.Promoted).Select(e => e.Trial).Distinct().Order())
            {
                if (_state.Closed.Add(paused))
                {
                    operations.Add(new CloseTrial(paused));
                }
            }
            _state.Completed = true;
            operations.Add(new CompleteSearch());
        }
        return operations;
    }

    /// <summary>The best not-yet-promoted trial in the top 1/reduction of the highest rung that has one, and the rung it goes to.</summary>
    private (int Trial, int Rung)? TryPromote()
    {
        for (int rung = RungEpochs.Count - 2; rung >= 0; rung--)
        {
            List<RungEntry> entries = _state.Rungs[rung];
            int promotable = (int)Math.Floor(entries.Count / _settings.Reduction);
            RungEntry? next = entries.OrderByDescending(e => e.Score).ThenBy(e => e.Trial).Take(promotable).FirstOrDefault(e => !e.Promoted);
            if (next is not null)
            {
                next.Promoted = true;
                return (next.Trial, rung + 1);
            }
        }
        return null;
    }

    private sealed class State
    {
        public int Created { get; set; }

        /// <summary>Trials training now, and the rung each is training to.</summary>
        public Dictionary<int, int> Training { get; set; } = [];

        /// <summary>Trials waiting for their features, and the rung each was to train to; they hold no slot.</summary>
        public Dictionary<int, int> Blocked { get; set; } = [];

        /// <summary>Unblocked trials waiting for a slot, and their rungs.</summary>
        public Dictionary<int, int> Ready { get; set; } = [];

        /// <summary>Per rung, the trials that reported there, with their scores (higher is better).</summary>
        public List<List<RungEntry>> Rungs { get; set; } = [];

        public HashSet<int> Closed { get; set; } = [];

        public bool Completed { get; set; }
    }

    private sealed class RungEntry
    {
        public int Trial { get; set; }

        public double Score { get; set; }

        public bool Promoted { get; set; }
    }
}
