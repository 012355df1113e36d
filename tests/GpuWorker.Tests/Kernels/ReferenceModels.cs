using Cluster.GpuWorker.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Kernels;

/// <summary>Models with non-trivial weights, their float64 reference, and how features are compared.</summary>
internal static class ReferenceModels
{
    /// <summary>
    /// <paramref name="model"/> with every batch norm made non-trivial: fresh ones (mean 0, variance 1, scale 1, shift
    /// 0) are the identity, which folds to nothing and hides a wrong formula. Imported graphs keep their real weights.
    /// </summary>
    public static Backbone WithTrainedLikeStatistics(Backbone model, int seed)
    {
        var generator = new Generator((ulong)seed);
        using var noGrad = no_grad();
        Dictionary<string, Tensor> state = model.state_dict();
        foreach (string mean in state.Keys.Where(k => k.EndsWith(".running_mean", StringComparison.Ordinal)).ToList())
        {
            string prefix = mean[..^".running_mean".Length];
            state[mean].copy_(randn(state[mean].shape, generator: generator) * 0.2);
            state[$"{prefix}.running_var"].copy_(rand(state[mean].shape, generator: generator) + 0.5);
            if (state.TryGetValue($"{prefix}.weight", out Tensor? gamma))
            {
                gamma.copy_(rand(gamma.shape, generator: generator) + 0.5);
            }
            if (state.TryGetValue($"{prefix}.bias", out Tensor? beta))
            {
                beta.copy_(randn(beta.shape, generator: generator) * 0.1);
            }
        }
        model.eval();
        return model;
    }

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
