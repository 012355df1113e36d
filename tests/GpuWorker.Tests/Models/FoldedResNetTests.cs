using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Tests.Kernels;
using Shouldly;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Models;

public sealed class FoldedResNetTests
{
    public FoldedResNetTests() => TorchRuntime.Initialize();

    // Basic blocks, at taps by every kind of name. Bottlenecks (a downsampling shortcut in every stage) are checked folded,
    // at every tap and at 224, against float64 by ModelNumericsTests for ResNet-50, -101 and -152, and unfolded too.
    [Theory]
    [InlineData("resnet18")]
    public void Folded_batch_norms_give_the_backbones_features_at_every_covered_tap(string architecture)
    {
        using Backbone reference = BuildWithTrainedLikeStatistics(architecture, seed: 5);
        using Tensor image = randn([2, 3, 64, 64], generator: new Generator(9));
        string[] taps = ["bn1", "relu", "maxpool", "layer1.0", "layer2", "conv4_block1_out", "layer4", "avgpool"];
        Dictionary<string, Tensor> expected = taps.ToDictionary(t => t, t => Eager(reference, image, t));

        using InferenceModel folded = TestKernels.Prepare(CopyOf(reference, architecture), "fp32", 64, batch: 2);

        folded.Folded.ShouldNotBeNull();
        foreach (string tap in taps)
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            Tensor actual = folded.ForwardTo(image, tap);
            actual.shape.ShouldBe(expected[tap].shape, tap);
            double error = (actual - expected[tap]).abs().max().item<float>();
            double magnitude = expected[tap].abs().max().item<float>();
            error.ShouldBeLessThan(1e-4 * Math.Max(1, magnitude), $"{architecture} at {tap}: max difference {error} against values up to {magnitude}");
            expected[tap].Dispose();
        }
    }

    [Fact]
    public void In_bf16_the_folded_features_stay_close_to_the_float32_backbone()
    {
        using Backbone reference = BuildWithTrainedLikeStatistics("resnet18", seed: 6);
        using Tensor image = randn([4, 3, 64, 64], generator: new Generator(10));
        using Tensor expected = Eager(reference, image, "avgpool");

        using InferenceModel folded = TestKernels.Prepare(CopyOf(reference, "resnet18"), "bf16", 64, batch: 4);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        Tensor actual = folded.ForwardTo(folded.PrepareInput(image), "avgpool").to(ScalarType.Float32);

        // bf16 keeps 8 bits of mantissa: features agree to a few percent, and in direction almost exactly.
        double cosine = nn.functional.cosine_similarity(actual, expected, dim: 1).min().item<float>();
        cosine.ShouldBeGreaterThan(0.99);
    }

    [Fact]
    public void Taps_the_fold_does_not_cover_and_other_families_run_the_backbone_itself()
    {
        using Backbone reference = BuildWithTrainedLikeStatistics("resnet18", seed: 7);
        using Tensor image = randn([1, 3, 64, 64], generator: new Generator(11));
        using Tensor expectedConv1 = Eager(reference, image, "conv1");
        using Tensor expectedLogits = Eager(reference, image, "fc");
        using InferenceModel resnet = TestKernels.Prepare(CopyOf(reference, "resnet18"), "fp32", 64, batch: 1);

        using (var scope = NewDisposeScope())
        using (var noGrad = no_grad())
        {
            resnet.Folded!.Covers("conv1").ShouldBeFalse();
            resnet.ForwardTo(image, "conv1").allclose(expectedConv1, rtol: 1e-5, atol: 1e-6).ShouldBeTrue();
            resnet.ForwardTo(image, "fc").allclose(expectedLogits, rtol: 1e-4, atol: 1e-5).ShouldBeTrue();
        }

        using InferenceModel mobilenet = TestKernels.Prepare(ModelCatalog.Find("mobilenet_v3_small").Build(), "fp32", 64, batch: 1);
        mobilenet.Folded.ShouldBeNull();
        using InferenceModel unfolded = TestKernels.Prepare(ModelCatalog.Find("resnet18").Build(), "fp32", 64, batch: 1, fold: false);
        unfolded.Folded.ShouldBeNull();
    }

    private static Tensor Eager(Backbone model, Tensor image, string tap)
    {
        using var noGrad = no_grad();
        return model.ForwardTo(image, tap);
    }

    /// <summary>
    /// A second model with the same weights (not the same seed: tests running in parallel draw from the global
    /// generator between a seed and the initialisation).
    /// </summary>
    private static Backbone CopyOf(Backbone source, string architecture) => ReferenceModels.CopyOf(source, ModelCatalog.Find(architecture));

    /// <summary>
    /// A random ResNet whose batch norms are not the identity (fresh ones have mean 0, variance 1, scale 1,
    /// shift 0, which would fold to nothing and hide a wrong formula).
    /// </summary>
    private static Backbone BuildWithTrainedLikeStatistics(string architecture, int seed)
    {
        Backbone model = ModelCatalog.Find(architecture).Build();
        var generator = new Generator((ulong)seed);
        using var noGrad = no_grad();
        foreach ((string name, Tensor tensor) in model.state_dict())
        {
            if (name.EndsWith(".running_mean", StringComparison.Ordinal))
            {
                tensor.copy_(randn(tensor.shape, generator: generator) * 0.2);
            }
            else if (name.EndsWith(".running_var", StringComparison.Ordinal))
            {
                tensor.copy_(rand(tensor.shape, generator: generator) + 0.5);
            }
            else if (name.Contains(".bn", StringComparison.Ordinal) || name.StartsWith("bn1.", StringComparison.Ordinal) || name.Contains("downsample.1.", StringComparison.Ordinal))
            {
                if (name.EndsWith(".weight", StringComparison.Ordinal))
                {
                    tensor.copy_(rand(tensor.shape, generator: generator) + 0.5);
                }
                else if (name.EndsWith(".bias", StringComparison.Ordinal))
                {
                    tensor.copy_(randn(tensor.shape, generator: generator) * 0.1);
                }
            }
        }
        model.eval();
        return model;
    }
}
