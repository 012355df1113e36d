namespace Cluster.GpuWorker.Hosting;

/// <summary>
/// What the worker is doing right now, for heartbeats. Consumers call <see cref="Begin"/> and dispose the
/// result when the job ends (whatever the outcome).
/// </summary>
public sealed class JobTracker
{
    private readonly object _gate = new();
    private string? _currentJob;
    private double? _imagesPerSecond;
    private string? _waiting;

    public string? CurrentJob
    {
        get
        {
            lock (_gate)
            {
                return _currentJob;
            }
        }
    }

    public double? ImagesPerSecond
    {
        get
        {
            lock (_gate)
            {
                return _imagesPerSecond;
            }
        }
    }

    /// <summary>What the current job waits for, when it waits on something outside it (a full or read-only volume), with
    /// since when; null while it works. Heartbeats carry it, so `coordinator workers` shows a stuck worker's reason.</summary>
    public string? Waiting
    {
        get
        {
            lock (_gate)
            {
                return _waiting;
            }
        }
    }

    /// <summary>Marks the worker waiting for <paramref name="what"/> until the returned scope is disposed.</summary>
    public IDisposable BeginWaiting(string what) => BeginWaiting(what, DateTime.UtcNow);

    /// <summary>As <see cref="BeginWaiting(string)"/>, for a wait that began at <paramref name="sinceUtc"/> for another reason.</summary>
    public IDisposable BeginWaiting(string what, DateTime sinceUtc)
    {
        string waiting = $"{what} (since {sinceUtc:HH:mm:ss} UTC)";
        lock (_gate)
        {
            _waiting = waiting;
        }
        return new WaitScope(this, waiting);
    }

    public IDisposable Begin(string jobId)
    {
        lock (_gate)
        {
            _currentJob = jobId;
            _imagesPerSecond = null;
        }
        return new JobScope(this, jobId);
    }

    public void ReportThroughput(double imagesPerSecond)
    {
        lock (_gate)
        {
            _imagesPerSecond = imagesPerSecond;
        }
    }

    private void End(string jobId)
    {
        lock (_gate)
        {
            if (_currentJob == jobId)
            {
                _currentJob = null;
                _imagesPerSecond = null;
            }
        }
    }

    private void EndWaiting(string waiting)
    {
        lock (_gate)
        {
            if (ReferenceEquals(_waiting, waiting))
            {
                _waiting = null;
            }
        }
    }

    private sealed class WaitScope(JobTracker tracker, string waiting) : IDisposable
    {
        public void Dispose() => tracker.EndWaiting(waiting);
    }

    private sealed class JobScope(JobTracker tracker, string jobId) : IDisposable
    {
        public void Dispose() => tracker.End(jobId);
    }
}
