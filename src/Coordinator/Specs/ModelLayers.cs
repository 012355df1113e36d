using System.Collections.Concurrent;
using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Models;

namespace Cluster.Coordinator.Specs;

/// <summary>
/// The layer names (taps) of one architecture without its classifier, and the step each designates, as
/// <see cref="Backbone.ResolveTap"/> resolves them. Kept per process: building a model allocates all its weights, and
/// the built-in resnet18-imagenet imports a 63 MB ONNX graph (seconds on two cores), while its names never change.
/// </summary>
internal sealed class ModelLayers
{
    private static readonly ConcurrentDictionary<string, Lazy<ModelLayers>> s_cache = new(StringComparer.Ordinal);

    private readonly IReadOnlyDictionary<string, int> _stepOf;

    private ModelLayers(string model, IReadOnlyDictionary<string, int> stepOf, int stepCount, IReadOnlyList<string> names)
    {
        Model = model;
        _stepOf = stepOf;
        StepCount = stepCount;
        Names = names;
    }

    public string Model { get; }

    public int StepCount { get; }

    /// <summary>Every accepted name, the short ones users know first (stage names and Keras aliases before `layer3.1`).</summary>
    public IReadOnlyList<string> Names { get; }

    public static ModelLayers For(ArchitectureInfo architecture) =>
        s_cache.GetOrAdd(architecture.Name, _ => new Lazy<ModelLayers>(() => Build(architecture))).Value;

    public bool TryResolve(string tap, out int step) => _stepOf.TryGetValue(tap, out step);

    /// <summary>The model's last step (its global pool, or VGG's flatten): nothing with weights comes after it.</summary>
    public bool IsLastStep(int step) => step == StepCount - 1;

    private static ModelLayers Build(ArchitectureInfo architecture)
    {
        TorchRuntime.Initialize();
        using Backbone backbone = architecture.Build(new BackboneOptions(IncludeTop: false));
        List<string> names = backbone.TapNames.Distinct(StringComparer.Ordinal).ToList();
        // Resolved by the backbone itself, so the spec accepts exactly what a worker will.
        Dictionary<string, int> stepOf = names.ToDictionary(n => n, backbone.ResolveTap, StringComparer.Ordinal);
        List<string> shown = names.Where(n => !n.Contains('.', StringComparison.Ordinal))
            .Concat(names.Where(n => n.Contains('.', StringComparison.Ordinal)))
            .ToList();
        return new ModelLayers(architecture.Name, stepOf, backbone.Steps.Count, shown);
    }
}
