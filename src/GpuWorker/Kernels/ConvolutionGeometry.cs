using System.Globalization;

namespace Cluster.GpuWorker.Kernels;

/// <summary>
/// What a convolution computes, independent of its input: channels, kernel, stride, padding (the same on both sides of
/// a dimension, as torch's conv2d takes it), dilation, groups, and whether it adds a bias.
/// </summary>
public readonly record struct ConvolutionGeometry(
    long InChannels,
    long OutChannels,
    long KernelHeight,
    long KernelWidth,
    long StrideHeight,
    long StrideWidth,
    long PadHeight,
    long PadWidth,
    long DilationHeight,
    long DilationWidth,
    long Groups,
    bool HasBias)
{
    /// <summary>A 1×1 convolution without padding or groups: a matrix product over the (strided) pixels.</summary>
    public bool IsPointwise => KernelHeight == 1 && KernelWidth == 1 && PadHeight == 0 && PadWidth == 0 && Groups == 1;

    /// <summary>The output's spatial size for an input of <paramref name="height"/>×<paramref name="width"/>.</summary>
    public (long Height, long Width) OutputSize(long height, long width) =>
        (OutputLength(height, KernelHeight, StrideHeight, PadHeight, DilationHeight),
         OutputLength(width, KernelWidth, StrideWidth, PadWidth, DilationWidth));

    /// <summary>Multiply-accumulates per image at <paramref name="height"/>×<paramref name="width"/> (for time estimates).</summary>
    public long MultiplyAccumulates(long height, long width)
    {
        (long oh, long ow) = OutputSize(height, width);
        return oh * ow * OutChannels * (InChannels / Groups) * KernelHeight * KernelWidth;
    }

    public override string ToString()
    {
        var text = string.Create(CultureInfo.InvariantCulture,
            $"{InChannels}->{OutChannels} k{KernelHeight}x{KernelWidth} s{StrideHeight}x{StrideWidth} p{PadHeight}x{PadWidth}");
        if (DilationHeight != 1 || DilationWidth != 1)
        {
            text += string.Create(CultureInfo.InvariantCulture, $" d{DilationHeight}x{DilationWidth}");
        }
        if (Groups != 1)
        {
            text += string.Create(CultureInfo.InvariantCulture, $" g{Groups}");
        }
        return HasBias ? text + " bias" : text;
    }

    private static long OutputLength(long input, long kernel, long stride, long pad, long dilation) =>
        (input + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1;
}
