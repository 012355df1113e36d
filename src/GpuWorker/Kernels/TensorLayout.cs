using static TorchSharp.torch;

namespace Cluster.GpuWorker.Kernels;

/// <summary>How a 4-D tensor lies in memory, as libtorch itself classifies it when it picks a convolution kernel.</summary>
public enum TensorLayout
{
    /// <summary>NCHW (and anything libtorch does not take for channels-last).</summary>
    Contiguous,

    /// <summary>NHWC in memory, NCHW in shape (channels-last strides).</summary>
    ChannelsLast,
}

public static class TensorLayouts
{
    /// <summary>
    /// libtorch's own rule (c10's is_channels_last_strides_2d_s4, behind suggest_memory_format), so that a kernel
    /// probe given tensors of the same class runs the same kernel as the model does. The rule matters for ambiguous
    /// shapes: a pooled [N, C, 1, 1] tensor with strides (C, 1, 1, 1) is NCHW to libtorch, with (C, 1, C, C) it is
    /// channels-last, and the two pick different oneDNN kernels.
    /// </summary>
    public static TensorLayout Of(Tensor tensor)
    {
        if (tensor.dim() != 4)
        {
            return TensorLayout.Contiguous;
        }
        long[] sizes = tensor.shape;
        long[] strides = tensor.stride();
        return IsChannelsLast(sizes, strides) ? TensorLayout.ChannelsLast : TensorLayout.Contiguous;
    }

    internal static bool IsChannelsLast(ReadOnlySpan<long> sizes, ReadOnlySpan<long> strides)
    {
        if (strides[1] == 0)
        {
            return false;
        }
        long min = 0;
        foreach (int d in (ReadOnlySpan<int>)[1, 3, 2, 0])
        {
            if (sizes[d] == 0 || strides[d] < min)
            {
                return false;
            }
            // An N111 tensor with equal strides is NCHW by default (libtorch's comment: the flaw of implicit formats).
            if (d == 0 && min == strides[1])
            {
                return false;
            }
            min = strides[d];
            if (sizes[d] > 1)
            {
                min *= sizes[d];
            }
        }
        return true;
    }

    /// <summary>
    /// A copy of a 4-D tensor with channels-last strides (TorchSharp has no memory_format API), written into a fresh
    /// NHWC buffer: `permute().contiguous()` would keep the strides of a [N, C, 1, 1] tensor, which libtorch already
    /// deems contiguous, and so leave it NCHW to libtorch. Differentiable (the copy passes gradients through).
    /// </summary>
    public static Tensor ToChannelsLast(Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        long[] s = tensor.shape;
        using Tensor source = tensor.permute(0, 2, 3, 1);
        using Tensor nhwc = empty([s[0], s[2], s[3], s[1]], dtype: tensor.dtype, device: tensor.device);
        nhwc.copy_(source);
        return nhwc.permute(0, 3, 1, 2);
    }

    /// <summary><paramref name="tensor"/> in <paramref name="layout"/>: itself (a new handle) when it already is, else a copy.</summary>
    public static Tensor To(Tensor tensor, TensorLayout layout)
    {
        if (Of(tensor) == layout)
        {
            return tensor.alias();
        }
        return layout == TensorLayout.ChannelsLast ? ToChannelsLast(tensor) : tensor.contiguous();
    }
}
