using Cluster.GpuWorker.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Kernels;

/// <summary>Models with non-trivial weights, their float64 reference, and how features are compared.</summary>
internal static class ReferenceModels
{
    /// <summary>A second model of <paramref name="info"/> with <paramref name="source"/>'s weights, copied (not reseeded).</summary>
    public static Backbone CopyOf(Backbone source, ArchitectureInfo info)
    {
        Backbone copy = info.Build(new BackboneOptions(IncludeTop: source.IncludeTop));
        Dictionary<string, Tensor> from = source.state_dict();
        using var noGrad = no_grad();
        foreach ((string name, Tensor tensor) in copy.state_dict())
        {
            tensor.copy_(from[name]);
        }
        copy.eval();
        return copy;
    }

    /// <summary>
    /// The activations at <paramref name="taps"/> of a float64, NCHW copy of <paramref name="model"/>: libtorch has no
    /// oneDNN kernels for float64, so these come from its plain reference loops, independent of what is checked.
    /// </summary>
    public static Dictionary<string, Tensor> Float64Taps(Backbone model, Tensor images, IReadOnlyCollection<string> taps)
    {
        model.to(float64);
        try
        {
            using var noGrad = no_grad();
            using Tensor input = images.to(float64).contiguous();
            return model.ForwardTaps(input, taps);
        }
        finally
        {
            model.to(float32);
        }
    }

    /// <summary>Largest difference relative to the reference's largest magnitude, and the lowest per-image cosine.</summary>
    public static (double RelativeError, double Cosine) Compare(Tensor actual, Tensor expected)
    {
        using var scope = NewDisposeScope();
        Tensor a = actual.to(float64).contiguous().flatten(1);
        Tensor e = expected.to(float64).contiguous().flatten(1);
        double scale = e.abs().max().item<double>();
        double error = (a - e).abs().max().item<double>() / Math.Max(scale, 1e-30);
        double cosine = nn.functional.cosine_similarity(a, e, dim: 1, eps: 1e-30).min().item<double>();
        return (double.IsNaN(error) ? double.PositiveInfinity : error, double.IsNaN(cosine) ? -1 : cosine);
    }
}
