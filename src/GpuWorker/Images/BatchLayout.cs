namespace Cluster.GpuWorker.Images;

/// <summary>
/// How a run of images is cut into batches: consecutive ranges of <c>batchSize</c> images, except that the last
/// images (the final <c>tailBatches</c> batches' worth) are shared out in near-equal batches, so that that many
/// consumers working in parallel finish together.
/// </summary>
/// <remarks>
/// Why the tail: two forward lanes alternate batches, and with 1,000 images in batches of 32 the last two batches
/// would hold 32 and 8 images; one lane would sit idle for three quarters of a batch (~0.4 s of a core at ResNet-18
/// bf16 on this machine) at the end of every shard. Cut as 20 and 20, both lanes finish together.
/// </remarks>
public readonly record struct BatchLayout
{
    private readonly int _batchSize;
    private readonly int _fullBatches;
    private readonly int _tailParts;
    private readonly int _tailSize;
    private readonly int _tailLarger;

    /// <param name="count">Images in the run.</param>
    /// <param name="batchSize">Images per batch before the tail.</param>
    /// <param name="tailBatches">Consumers to share the tail among; 1 cuts plain batches (the last one short).</param>
    public BatchLayout(int count, int batchSize, int tailBatches = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(tailBatches, 1);
        Count = count;
        _batchSize = batchSize;
        int plain = (int)(((long)count + batchSize - 1) / batchSize);
        _fullBatches = Math.Max(0, plain - tailBatches);
        int tail = count - (_fullBatches * batchSize);

        // The tail's batches: as many as asked (fewer when there are fewer images), sizes differing by one at most,
        // the larger ones first.
        _tailParts = Math.Min(tailBatches, tail);
        _tailSize = _tailParts == 0 ? 0 : tail / _tailParts;
        _tailLarger = _tailParts == 0 ? 0 : tail % _tailParts;
        Batches = _fullBatches + _tailParts;
    }

    /// <summary>Images in the run.</summary>
    public int Count { get; }

    /// <summary>How many batches the run has.</summary>
    public int Batches { get; }

    /// <summary>The index, in the run, of the first image of <paramref name="batch"/>.</summary>
    public int Start(int batch)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(batch);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(batch, Batches);
        if (batch <= _fullBatches)
        {
            return batch * _batchSize;
        }
        int part = batch - _fullBatches;
        return (_fullBatches * _batchSize) + (part * _tailSize) + Math.Min(part, _tailLarger);
    }

    /// <summary>How many images <paramref name="batch"/> holds.</summary>
    public int Size(int batch) => Start(batch + 1) - Start(batch);

    /// <summary>The batch that image <paramref name="image"/> (an index in the run) falls in.</summary>
    public int BatchOf(int image)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(image);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(image, Count);
        int full = _fullBatches * _batchSize;
        if (image < full)
        {
            return image / _batchSize;
        }
        int offset = image - full;
        int inLarger = _tailLarger * (_tailSize + 1);
        return _fullBatches + (offset < inLarger ? offset / (_tailSize + 1) : _tailLarger + ((offset - inLarger) / _tailSize));
    }
}
