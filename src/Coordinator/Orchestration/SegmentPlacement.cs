using Cluster.Contracts;
using Cluster.Contracts.Training;
using Cluster.Contracts.Workers;

namespace Cluster.Coordinator.Orchestration;

/// <summary>
/// Where a training segment goes: to the worker that already holds its frozen features in memory, when that worker is
/// alive and free, else to the shared queue that every worker takes from. What it knows comes from heartbeats (the
/// resident sets, the job in progress; seconds stale) and from outcomes (a worker that just finished a segment holds
/// that segment's sets and has a free lane, which is exactly when a trial's next segment, or the next trial of its
/// prefix, is sent). A wrong guess costs little and loses nothing: a busy worker passes a directed segment on to the
/// shared queue at once, and one that died lets it move there after <see cref="QueueNames.DirectedWait"/>.
/// One coordinator service, one event at a time (its queue's limit): the state lives here, in memory, and is rebuilt
/// from heartbeats within seconds of a restart.
/// </summary>
public sealed class SegmentPlacement(TimeProvider? clock = null, TimeSpan? lostAfter = null, bool enabled = true)
{
    /// <summary>`Coordinator:Locality` (default true): false sends every segment to the shared queue, as before locality
    /// (for measuring what it saves, or for a broker whose policies forbid per-worker queues).</summary>
    public const string SettingKey = "Coordinator:Locality";

    private readonly TimeProvider _clock = clock ?? TimeProvider.System;
    private readonly TimeSpan _lostAfter = lostAfter ?? TimeSpan.FromSeconds(15);
    private readonly Dictionary<string, WorkerView> _workers = new(StringComparer.Ordinal);
    private readonly Dictionary<(Guid Trial, int Segment), Placed> _inFlight = [];
    private readonly Dictionary<Guid, string> _failedOn = [];
    private readonly object _gate = new();

    /// <summary>Segments sent to a worker's own queue, and to the shared queue, since the service started.</summary>
    public long Directed { get; private set; }

    public long Shared { get; private set; }

    private DateTime Now => _clock.GetUtcNow().UtcDateTime;

    public void Heard(WorkerHeartbeat heartbeat)
    {
        ArgumentNullException.ThrowIfNull(heartbeat);
        lock (_gate)
        {
            WorkerView worker = View(heartbeat.WorkerId);
            worker.DirectQueue = heartbeat.DirectQueue;
            worker.HeardAt = Now;
            worker.Resident = new HashSet<string>(heartbeat.ResidentFeatureSets, StringComparer.Ordinal);
            // What it learned from outcomes a while ago, this heartbeat reports (or reports evicted).
            foreach (string old in worker.Learned.Where(l => Now - l.Value > _lostAfter).Select(l => l.Key).ToList())
            {
                worker.Learned.Remove(old);
            }
            // A heartbeat sent just before a segment's outcome can arrive after it: the job it names is then finished.
            worker.BusyWith = heartbeat.CurrentJob is string job && !worker.Finished.Contains(job) ? job : null;
            if (heartbeat.CurrentJob is null && worker.DirectedAt is DateTime directed && Now - directed > QueueNames.DirectedWait + _lostAfter)
            {
                // Idle long after a segment was directed to it, with no outcome from anyone: the segment moved on (passed on,
                // or dead-lettered when the worker restarted) and its outcome has not come yet. The worker is free.
                worker.DirectedAt = null;
            }
        }
    }

    public void Stopped(string workerId)
    {
        lock (_gate)
        {
            _workers.Remove(workerId);
        }
    }

    /// <summary>A segment's outcome (completed or failed) from <paramref name="workerId"/>: its lane is free, and it holds
    /// the sets the segment trained on (until its memory budget evicts them, which its next heartbeat says). After a
    /// failure the trial's retry is not sent back to that worker: a failure is tried again elsewhere where it can be.</summary>
    public void Finished(string? workerId, Guid trialId, int segment, bool failed = false)
    {
        lock (_gate)
        {
            if (failed && workerId is not null)
            {
                _failedOn[trialId] = workerId;
            }
            else
            {
                _failedOn.Remove(trialId);
            }
            if (!_inFlight.Remove((trialId, segment), out Placed? placed))
            {
                return;
            }
            if (placed.DirectedTo is string directedTo && _workers.TryGetValue(directedTo, out WorkerView? target))
            {
                target.DirectedAt = null;
            }
            if (workerId is not null && _workers.TryGetValue(workerId, out WorkerView? worker))
            {
                foreach (string key in placed.Keys)
                {
                    worker.Learned[key] = Now;
                }
                worker.FinishedAt = Now;
                worker.BusyWith = null;
                worker.Finished.Add(placed.JobId);
                if (worker.Finished.Count > 64)
                {
                    worker.Finished.Clear();
                    worker.Finished.Add(placed.JobId);
                }
            }
        }
    }

    /// <summary>The queue to send <paramref name="segment"/> to, recorded so that its outcome frees the worker chosen.</summary>
    public Uri Route(TrainSegment segment)
    {
        ArgumentNullException.ThrowIfNull(segment);
        IReadOnlyList<string> keys = segment.Data.FeatureSetKeys();
        lock (_gate)
        {
            DateTime now = Now;
            ForgetStale(now);
            // A trial that trains from images has nothing in memory to go back to: any worker is as good.
            string? failedOn = _failedOn.GetValueOrDefault(segment.TrialId);
            WorkerView? chosen = keys.Count == 0 || !enabled ? null : _workers.Values
                .Where(w => w.DirectQueue is not null && w.Id != failedOn && now - w.HeardAt <= _lostAfter && w.DirectedAt is null && w.BusyWith is null
                    && keys.All(k => w.Resident.Contains(k) || w.Learned.ContainsKey(k)))
                // The one that finished last is the likeliest to be idle still; then by id, so the choice is reproducible.
                .OrderByDescending(w => w.FinishedAt ?? DateTime.MinValue).ThenBy(w => w.Id, StringComparer.Ordinal)
                .FirstOrDefault();
            _inFlight[(segment.TrialId, segment.Segment)] = new Placed(keys, chosen?.Id, segment.JobId(), now);
            if (chosen is null)
            {
                Shared++;
                return SharedQueue;
            }
            chosen.DirectedAt = now;
            Directed++;
            return DirectAddress(chosen.DirectQueue!);
        }
    }

    /// <summary>Which worker <see cref="Route"/> sent the segment to (null: the shared queue, or not routed).</summary>
    public string? DirectedTo(Guid trialId, int segment)
    {
        lock (_gate)
        {
            return _inFlight.TryGetValue((trialId, segment), out Placed? placed) ? placed.DirectedTo : null;
        }
    }

    public static Uri SharedQueue => Hosting.ClusterBus.GpuWorkQueue;

    /// <summary>
    /// A worker's own queue, addressed through its exchange: sending declares only the exchange (as the worker declared
    /// it, with the shared queue as its alternate), never the queue, whose dead-letter arguments are the worker's to set.
    /// </summary>
    public static Uri DirectAddress(string queue) => new($"exchange:{queue}?alternateexchange={QueueNames.GpuWork}");

    private WorkerView View(string id)
    {
        if (!_workers.TryGetValue(id, out WorkerView? worker))
        {
            worker = new WorkerView(id);
            _workers[id] = worker;
        }
        return worker;
    }

    /// <summary>Segments cancelled or lost without an outcome would otherwise stay recorded for ever.</summary>
    private void ForgetStale(DateTime now)
    {
        if (_inFlight.Count < 4096)
        {
            return;
        }
        foreach (var entry in _inFlight.Where(e => now - e.Value.At > TimeSpan.FromDays(1)).ToList())
        {
            _inFlight.Remove(entry.Key);
        }
    }

    private sealed record Placed(IReadOnlyList<string> Keys, string? DirectedTo, string JobId, DateTime At);

    private sealed class WorkerView(string id)
    {
        public string Id { get; } = id;

        public string? DirectQueue { get; set; }

        public DateTime HeardAt { get; set; }

        public HashSet<string> Resident { get; set; } = new(StringComparer.Ordinal);

        /// <summary>Sets it trained on since its last heartbeat may not list them yet.</summary>
        public Dictionary<string, DateTime> Learned { get; } = new(StringComparer.Ordinal);

        public HashSet<string> Finished { get; } = new(StringComparer.Ordinal);

        public string? BusyWith { get; set; }

        public DateTime? FinishedAt { get; set; }

        /// <summary>When a segment was sent to its own queue and has no outcome yet: one directed segment at a time.</summary>
        public DateTime? DirectedAt { get; set; }
    }
}
