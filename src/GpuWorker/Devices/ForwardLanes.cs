using System.Collections.Concurrent;
using TorchSharp;

namespace Cluster.GpuWorker.Devices;

/// <summary>
/// How a worker spreads forward passes over CPU cores: <see cref="Lanes"/> batches at once, each on its own thread
/// with <see cref="ThreadsPerLane"/> intra-op threads.
/// </summary>
/// <remarks>
/// One batch at a time over all cores (libtorch's default) makes every layer a parallel region that ends in a
/// barrier: a core that is interrupted (by an image decoder, the garbage collector, a database write) stalls the
/// whole layer, and the small late layers do not split well. Whole batches on separate cores have no barriers
/// between them. Measured on the 2-core build machine, ResNet-18 bf16, batch 32: one batch over 2 threads
/// 84.7 images/s, two batches of 1 thread each 99.2 (PyTorch 1.13 and the same figures in this project,
/// BENCHMARKS.md). The cost is one batch of activations per lane, so the default keeps the lanes few.
/// </remarks>
public sealed record LaneLayout(int Lanes, int ThreadsPerLane)
{
    /// <summary>
    /// The layout for <paramref name="device"/>: a GPU runs one batch at a time (one stream); a CPU worker runs
    /// <paramref name="lanes"/> lanes (0: 2 up to 8 cores, then one per 4 cores, at most 4) of
    /// <paramref name="threadsPerLane"/> threads (0: the cores shared out among the lanes).
    /// </summary>
    public static LaneLayout For(TorchDevice device, int lanes = 0, int threadsPerLane = 0, int? cores = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(lanes);
        ArgumentOutOfRangeException.ThrowIfNegative(threadsPerLane);
        int n = Math.Max(1, cores ?? Environment.ProcessorCount);
        if (device.IsCuda)
        {
            return new LaneLayout(1, threadsPerLane > 0 ? threadsPerLane : n);
        }
        int l = lanes > 0 ? lanes : Math.Clamp(n / 4, Math.Min(2, n), 4);
        return new LaneLayout(l, threadsPerLane > 0 ? threadsPerLane : Math.Max(1, n / l));
    }

    public override string ToString() => $"{Lanes} lane(s) × {ThreadsPerLane} thread(s)";
}

/// <summary>
/// Long-lived threads that run forward passes, one batch per lane at a time (see <see cref="LaneLayout"/>). Each
/// lane sets its own libtorch intra-op thread count (an OpenMP setting of the calling thread), so the rest of the
/// process keeps its own; a lane lives as long as the worker, so its OpenMP team and caches stay warm.
/// </summary>
public sealed class ForwardLanes : IDisposable
{
    private readonly BlockingCollection<Action> _work = new();
    private readonly Thread[] _threads;

    public ForwardLanes(LaneLayout layout)
    {
        ArgumentNullException.ThrowIfNull(layout);
        ArgumentOutOfRangeException.ThrowIfLessThan(layout.Lanes, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(layout.ThreadsPerLane, 1);
        Layout = layout;
        // at::set_num_threads also sets the default that threads which have not run libtorch yet start from: put it
        // back once the lanes have set theirs, so this does not change other threads of the process.
        int processDefault = torch.get_num_threads();
        using var ready = new CountdownEvent(layout.Lanes);
        _threads = new Thread[layout.Lanes];
        for (int i = 0; i < _threads.Length; i++)
        {
            _threads[i] = new Thread(() => Serve(ready)) { IsBackground = true, Name = $"forward-lane-{i}" };
            _threads[i].Start();
        }
        ready.Wait();
        torch.set_num_threads(processDefault);
    }

    public LaneLayout Layout { get; }

    /// <summary>Runs <paramref name="work"/> on the next free lane; the task ends when it has.</summary>
    public Task RunAsync(Action work) => RunAsync(() =>
    {
        work();
        return true;
    });

    /// <summary>Runs <paramref name="work"/> on the next free lane and returns its result.</summary>
    public Task<T> RunAsync<T>(Func<T> work)
    {
        ArgumentNullException.ThrowIfNull(work);
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        _work.Add(() =>
        {
            try
            {
                done.SetResult(work());
            }
            catch (Exception e)
            {
                done.SetException(e);
            }
        });
        return done.Task;
    }

    public void Dispose()
    {
        _work.CompleteAdding();
        foreach (Thread thread in _threads)
        {
            thread.Join();
        }
        _work.Dispose();
    }

    private void Serve(CountdownEvent ready)
    {
        // libtorch initialises a thread's count from the process default on its first use (get_num_threads is
        // one), and never again: use it first, so the count set next is the one that stays.
        torch.get_num_threads();
        torch.set_num_threads(Layout.ThreadsPerLane);
        ready.Signal();
        foreach (Action work in _work.GetConsumingEnumerable())
        {
            work();
        }
    }
}
