namespace Cluster.GpuWorker.Models;

/// <summary>An architecture users can name: how to build it, what it expects, and where it taps by default.</summary>
/// <param name="Name">The CLI and spec name (`resnet50`, `vgg19_bn`, `resnet18-imagenet`).</param>
/// <param name="WeightsSource">Where its weights come from: random initialisation or a file (`--weights`), or built in.</param>
/// <param name="DefaultTap">Where features are taken when no layer is given (the last feature map or global pool).</param>
/// <param name="ParameterCount">Parameters with the ImageNet classifier (as published; a test checks the built model).</param>
public sealed record ArchitectureInfo(
    string Name,
    string Family,
    long ParameterCount,
    Preprocessing Preprocessing,
    string DefaultTap,
    string WeightsSource,
    string Description,
    Func<BackboneOptions, Backbone> Factory)
{
    public int InputSize => Preprocessing.InputSize;

    public Backbone Build(BackboneOptions? options = null) => Factory(options ?? new BackboneOptions());
}

/// <summary>How to build a backbone: with its own classifier, a new one of <see cref="NumClasses"/>, or none.</summary>
/// <param name="IncludeTop">False drops the classifier (Keras' include_top=False): the model ends at its global pool.</param>
/// <param name="NumClasses">A new classifier with this many outputs; null keeps the architecture's own (1000 ImageNet classes).</param>
public sealed record BackboneOptions(bool IncludeTop = true, int? NumClasses = null);
