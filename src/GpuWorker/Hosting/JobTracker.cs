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

    private sealed class JobScope(JobTracker tracker, string jobId) : IDisposable
    {
        public void Dispose() => tracker.End(jobId);
    }
}
