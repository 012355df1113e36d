using MassTransit;

namespace Cluster.GpuWorker.Hosting;

/// <summary>
/// How many jobs this worker runs at once (one per device), whichever queue they came from: the shared queue every
/// worker takes from, and this worker's own queue of directed segments. Each endpoint has its own message limit; this
/// is what keeps the two together from running two jobs on one device.
/// </summary>
public sealed class JobLanes(int jobs = 1) : IDisposable
{
    private readonly SemaphoreSlim _free = new(Math.Max(1, jobs), Math.Max(1, jobs));

    public int Capacity { get; } = Math.Max(1, jobs);

    /// <summary>A lane now, or none (a directed segment then moves on rather than wait behind another job).</summary>
    public IDisposable? TryTake() => _free.Wait(0) ? new Lane(_free) : null;

    /// <summary>A lane once one is free: a job from the shared queue waits at most for the directed one running.</summary>
    public async Task<IDisposable> TakeAsync(CancellationToken ct)
    {
        await _free.WaitAsync(ct);
        return new Lane(_free);
    }

    public void Dispose() => _free.Dispose();

    private sealed class Lane(SemaphoreSlim free) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0)
            {
                free.Release();
            }
        }
    }
}

/// <summary>The shared queue's side of <see cref="JobLanes"/>: every job from it holds a lane while it runs.</summary>
public sealed class TakeLaneFilter(JobLanes lanes) : IFilter<ConsumeContext>
{
    public async Task Send(ConsumeContext context, IPipe<ConsumeContext> next)
    {
        using IDisposable lane = await lanes.TakeAsync(context.CancellationToken);
        await next.Send(context);
    }

    public void Probe(ProbeContext context) => context.CreateFilterScope("takeLane");
}
