using System.Text.Json;

namespace Cluster.Coordinator.Search;

/// <summary>
/// Grid and random search: every configuration of a fixed list trains its full epochs, at most `parallelism` trials at
/// a time; as one ends (or fails) the next starts. Grid's list enumerates the spec's values; random's draws the
/// configurations from its distributions (<see cref="SearchSpace"/>). Nothing is stopped early. A trial blocked on its
/// features leaves its slot to the next configuration and, once unblocked, takes the first slot that frees.
/// </summary>
public sealed class ExhaustiveSearch : ISearchMethod
{
    private readonly int _configurations;
    private readonly Func<int, int> _epochsOf;
    private readonly int _parallelism;
    private State _state = new();

    /// <param name="epochsOf">A configuration's own epochs (a grid may list several).</param>
    public ExhaustiveSearch(int configurations, Func<int, int> epochsOf, int parallelism)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(configurations, 1);
        ArgumentNullException.ThrowIfNull(epochsOf);
        ArgumentOutOfRangeException.ThrowIfLessThan(parallelism, 1);
        _configurations = configurations;
        _epochsOf = epochsOf;
        _parallelism = parallelism;
    }

    public IReadOnlyList<SearchOperation> Start() => _state.Created == 0 ? Fill([]) : [];

    public IReadOnlyList<SearchOperation> TrialReported(int trial, double metric) =>
        _state.Running.Remove(trial) ? Fill([new CloseTrial(trial)]) : [];

    public IReadOnlyList<SearchOperation> TrialFailed(int trial) =>
        _state.Running.Remove(trial) | _state.Blocked.Remove(trial) | _state.Ready.Remove(trial) ? Fill([]) : [];

    public IReadOnlyList<SearchOperation> TrialBlocked(int trial)
    {
        if (!_state.Running.Remove(trial))
        {
            return [];
        }
        _state.Blocked.Add(trial);
        return Fill([]);
    }

    public IReadOnlyList<SearchOperation> TrialUnblocked(int trial)
    {
        if (!_state.Blocked.Remove(trial))
        {
            return [];
        }
        _state.Ready.Add(trial);
        return Fill([]);
    }

    public string Snapshot() => JsonSerializer.Serialize(_state, SearchJson.Options);

    public void Restore(string snapshot) =>
        _state = JsonSerializer.Deserialize<State>(snapshot, SearchJson.Options) ?? throw new ArgumentException("an empty snapshot", nameof(snapshot));

    private List<SearchOperation> Fill(List<SearchOperation> operations)
    {
        while (_state.Running.Count < _parallelism && _state.Ready.Count > 0)
        {
            int ready = _state.Ready[0];
            _state.Ready.RemoveAt(0);
            _state.Running.Add(ready);
            operations.Add(new TrainUntil(ready, _epochsOf(ready)));
        }
        while (_state.Running.Count < _parallelism && _state.Created < _configurations)
        {
            int trial = _state.Created++;
            _state.Running.Add(trial);
            operations.Add(new CreateTrial(trial, trial));
            operations.Add(new TrainUntil(trial, _epochsOf(trial)));
        }
        if (_state.Running.Count == 0 && _state.Blocked.Count == 0 && _state.Ready.Count == 0 && _state.Created == _configurations && !_state.Completed)
        {
            _state.Completed = true;
            operations.Add(new CompleteSearch());
        }
        return operations;
    }

    private sealed class State
    {
        public int Created { get; set; }

        public List<int> Running { get; set; } = [];

        /// <summary>Created, waiting for their features; they hold no slot.</summary>
        public List<int> Blocked { get; set; } = [];

        /// <summary>Unblocked, waiting for a slot, first come first served.</summary>
        public List<int> Ready { get; set; } = [];

        public bool Completed { get; set; }
    }
}
