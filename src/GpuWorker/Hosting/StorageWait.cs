using Cluster.Storage.Files;
using Microsoft.Extensions.Logging;

namespace Cluster.GpuWorker.Hosting;

/// <summary>
/// What a job does when the shared volume is full or read-only (<see cref="StorageFaults"/>): waits until a test write
/// succeeds, checking every <paramref name="interval"/>, so that the same job runs again once an operator frees space or
/// remounts the volume, instead of failing its trial or shard for a fault of the volume. The wait honours the job's token:
/// a shutdown, or the broker taking the delivery back after its consumer timeout, leaves the job unacknowledged for
/// another worker (or this one, later). Writes are atomic, so the failed attempt left no torn file and no row behind.
/// The probe writes far less than a checkpoint, so it can pass while the job's own write still does not fit: each
/// consecutive fault of the same job therefore waits twice as long before probing (up to <see cref="MaxBackoff"/>), and
/// such a job runs again at a falling rate instead of spinning on its compute.
/// </summary>
public sealed class StorageWait(FileStore store, TimeSpan interval, JobTracker jobs, ILogger<StorageWait> logger)
{
    public static readonly TimeSpan MaxBackoff = TimeSpan.FromMinutes(5);

    /// <summary>How long the <paramref name="attempt"/>-th consecutive fault of one job waits before its first probe.</summary>
    public TimeSpan Backoff(int attempt) =>
        TimeSpan.FromTicks(Math.Min(MaxBackoff.Ticks, (long)(interval.Ticks * Math.Pow(2, Math.Clamp(attempt, 1, 30) - 1))));

    /// <param name="attempt">1 for the job's first fault, 2 for a fault of its run after that wait, and so on.</param>
    public async Task UntilWritableAsync(string jobId, IOException fault, int attempt, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(fault);
        TimeSpan backoff = Backoff(attempt);
        logger.LogWarning("Job {JobId} waits for the shared volume at {Root}: {Fault}; it runs again once a test write succeeds (first check in {Backoff:F1} s, then every {Seconds:F1} s; fault {Attempt} in a row)",
            jobId, store.Root, fault.Message, backoff.TotalSeconds, interval.TotalSeconds, attempt);
        DateTime since = DateTime.UtcNow;
        DateTime lastReport = since;
        string reason = StorageFaults.Describe(fault);
        IDisposable waiting = jobs.BeginWaiting($"the shared volume: {reason}", since);
        try
        {
            await Task.Delay(backoff, ct);
            while (StorageFaults.ProbeWrite(store) is string now)
            {
                if (now != reason)
                {
                    // Say so when the fault changes (a full volume remounted read-only): the operator fixes what is there now.
                    reason = now;
                    logger.LogWarning("Job {JobId} now waits for the shared volume at {Root}: {Fault}", jobId, store.Root, reason);
                    waiting.Dispose();
                    waiting = jobs.BeginWaiting($"the shared volume: {reason}", since);
                }
                await Task.Delay(interval, ct);
                if (DateTime.UtcNow - lastReport >= TimeSpan.FromMinutes(1))
                {
                    lastReport = DateTime.UtcNow;
                    logger.LogWarning("Job {JobId} still waits for the shared volume at {Root} ({Minutes:F0} min so far)", jobId, store.Root, (lastReport - since).TotalMinutes);
                }
            }
        }
        finally
        {
            waiting.Dispose();
        }
        logger.LogInformation("The shared volume at {Root} takes writes again after {Seconds:F0} s: job {JobId} runs again", store.Root, (DateTime.UtcNow - since).TotalSeconds, jobId);
    }
}
