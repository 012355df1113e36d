using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.Utils;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Kernels;

/// <summary>
/// A 2-D convolution module that computes through its model's <see cref="ConvolutionRouter"/> instead of calling
/// libtorch's conv2d directly. It takes over a TorchVision <see cref="Conv2d"/>'s parameters under the same names
/// (weight, bias), so state_dict keys, weight loading and optimizers see no difference.
/// </summary>
public sealed class RoutedConv2d : nn.Module<Tensor, Tensor>
{
    [ComponentName(Name = "weight")]
    private Parameter _weight;

    [ComponentName(Name = "bias")]
    private Parameter? _bias;

    private readonly ConvolutionGeometry _geometry;

    /// <summary>Takes <paramref name="conv"/>'s weight and bias (the same Parameter objects); the old module must not be used again.</summary>
    public RoutedConv2d(Conv2d conv, ConvolutionRouter router) : base("Conv2d")
    {
        ArgumentNullException.ThrowIfNull(conv);
        ArgumentNullException.ThrowIfNull(router);
        if (conv.padding is not { Length: 2 } padding || conv.padding_mode != PaddingModes.Zeros)
        {
            throw new NotSupportedException(
                $"Conv2d with {(conv.padding is null ? $"padding '{conv.padding_type}'" : $"padding mode {conv.padding_mode}")} cannot be routed (only explicit zero padding)");
        }
        _weight = conv.weight;
        _bias = conv.bias;
        _geometry = new ConvolutionGeometry(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.kernel_size[1],
            conv.stride[0], conv.stride[1], padding[0], padding[1], conv.dilation[0], conv.dilation[1], conv.groups, _bias is not null);
        Router = router;
        RegisterComponents();
    }

    public ConvolutionGeometry Geometry => _geometry;

    public ConvolutionRouter Router { get; }

    public Parameter weight
    {
        get => _weight;
        set
        {
            if (value.Handle != _weight.Handle)
            {
                _weight.Dispose();
                _weight = (Parameter)value.DetachFromDisposeScope();
                ConditionallyRegisterParameter("weight", _weight);
            }
        }
    }

    public Parameter? bias
    {
        get => _bias;
        set
        {
            _bias?.Dispose();
            _bias = (Parameter?)value?.DetachFromDisposeScope();
            ConditionallyRegisterParameter("bias", _bias);
        }
    }

    public override Tensor forward(Tensor input) => Router.Conv2d(input, _weight, _bias, _geometry);

    // As TorchSharp's own Convolution does: move the two parameters directly rather than by reflection.
    protected override nn.Module _to(Device device, ScalarType dtype, bool non_blocking)
    {
        if (ReplaceParameter(dtype, device, _weight, out Parameter? w))
        {
            weight = w!;
        }
        if (_bias is not null && ReplaceParameter(dtype, device, _bias, out Parameter? b))
        {
            bias = b!;
        }
        return this;
    }

    protected override nn.Module _to(DeviceType deviceType, int deviceIndex, bool non_blocking)
    {
        var device = new Device(deviceType, deviceIndex);
        if (ReplaceParameter(_weight.dtype, device, _weight, out Parameter? w))
        {
            weight = w!;
        }
        if (_bias is not null && ReplaceParameter(_bias.dtype, device, _bias, out Parameter? b))
        {
            bias = b!;
        }
        return this;
    }

    protected override nn.Module _to(ScalarType dtype, bool non_blocking)
    {
        if (ReplaceParameter(dtype, _weight.device, _weight, out Parameter? w))
        {
            weight = w!;
        }
        if (_bias is not null && ReplaceParameter(dtype, _bias.device, _bias, out Parameter? b))
        {
            bias = b!;
        }
        return this;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _weight.Dispose();
            _bias?.Dispose();
        }
        base.Dispose(disposing);
    }
}
