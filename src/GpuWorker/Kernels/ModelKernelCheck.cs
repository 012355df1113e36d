using static TorchSharp.torch;

namespace Cluster.GpuWorker.Kernels;

/// <summary>
/// How a model's convolutions get checked: trace a forward pass to find its sites (no kernel runs), then have every
/// configuration those sites make at the planned batch sizes verified and routed. Inference (<c>InferenceModel</c>)
/// and training (<c>Backbone.CheckKernels</c>) both go through here.
/// </summary>
public static class ModelKernelCheck
{
    /// <summary>The convolution sites <paramref name="forward"/> reaches, with every convolution traced, not computed.</summary>
    public static IReadOnlyList<ConvolutionSite> Trace(ConvolutionRouter router, Action forward)
    {
        ArgumentNullException.ThrowIfNull(router);
        ArgumentNullException.ThrowIfNull(forward);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        using ConvolutionTrace trace = router.BeginTrace();
        forward();
        return trace.Sites;
    }

    /// <summary>
    /// Verifies <paramref name="sites"/> at <paramref name="plan"/>'s batch sizes, threads and pass, and routes
    /// <paramref name="router"/> by the verdicts (adding to the routes it has, if any; any configuration met later is
    /// verified when it first runs).
    /// </summary>
    public static void Install(ConvolutionRouter router, KernelVerifier verifier, IEnumerable<ConvolutionSite> sites, Models.KernelPlan plan)
    {
        ArgumentNullException.ThrowIfNull(router);
        ArgumentNullException.ThrowIfNull(verifier);
        ArgumentNullException.ThrowIfNull(plan);
        ConvolutionRoutes routes = router.Routes ?? new ConvolutionRoutes(config => verifier.Resolve([config])[config]);
        List<ConvolutionConfig> configs = plan.BatchSizes.Distinct()
            .SelectMany(n => sites.Select(site => site.At(n, plan.Threads, plan.Pass)))
            .Where(c => !routes.Paths.ContainsKey(c))
            .ToList();
        if (configs.Count > 0)
        {
            routes.Add(verifier.Resolve(configs));
        }
        if (!ReferenceEquals(router.Routes, routes))
        {
            router.Use(routes);
        }
    }
}
