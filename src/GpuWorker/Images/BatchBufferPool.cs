using System.Collections.Concurrent;

namespace Cluster.GpuWorker.Images;

/// <summary>
/// At most <see cref="Capacity"/> batch buffers, created on first need and reused after that: the whole memory the
/// pipeline holds for pixels, whatever the size of the dataset. Renting waits while all are out.
/// </summary>
/// <remarks>
/// Not disposable on purpose: a batch may be returned after its pipeline is gone, and the semaphore holds no
/// handle (its wait handle is never asked for).
/// </remarks>
internal sealed class BatchBufferPool
{
    private readonly SemaphoreSlim _available;
    private readonly ConcurrentBag<float[]> _free = [];
    private readonly int _length;
    private int _created;

    public BatchBufferPool(int capacity, int length)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(length, 1);
        Capacity = capacity;
        _length = length;
        _available = new SemaphoreSlim(capacity, capacity);
    }

    public int Capacity { get; }

    /// <summary>How many buffers were ever allocated; never more than <see cref="Capacity"/>.</summary>
    public int Created => Volatile.Read(ref _created);

    public async ValueTask<float[]> RentAsync(CancellationToken ct)
    {
        await _available.WaitAsync(ct);
        if (_free.TryTake(out var buffer))
        {
            return buffer;
        }

        Interlocked.Increment(ref _created);

        // Pinned (on the pinned object heap, so it costs the GC nothing): native code can read it in place.
        return GC.AllocateUninitializedArray<float>(_length, pinned: true);
    }

    public void Return(float[] buffer)
    {
        _free.Add(buffer);
        _available.Release();
    }
}
