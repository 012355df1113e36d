using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Models;
using Shouldly;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Kernels;

/// <summary>
/// Every architecture, prepared as a worker prepares it (channels-last, folded batch norms, checked kernels), against
/// the same weights in float64 and NCHW run by libtorch's reference kernels, at every tap and at the model's own input
/// size (224, or 299 for Inception): oneDNN's faults depend on the shapes, so small inputs would not find them. On the
/// Zen 5 machine of issue 9 the unchecked kernels fail this for ResNets and MobileNets.
/// </summary>
public sealed class ModelNumericsTests(ITestOutputHelper output)
{
    public static TheoryData<string> Architectures => [.. ModelCatalog.All.Select(a => a.Name)];

    [Theory]
    [MemberData(nameof(Architectures))]
    public void Prepared_features_at_every_tap_match_a_float64_reference_at_the_native_input_size(string architecture)
    {
        TorchRuntime.Initialize();
        ArchitectureInfo info = ModelCatalog.Find(architecture);
        int size = info.InputSize;
        using Backbone reference = ReferenceModels.WithTrainedLikeStatistics(info.Build(new BackboneOptions(IncludeTop: false)), seed: 21);
        string[] taps = [.. reference.Steps.Select(s => s.Name)];
        using Tensor images = randn([2, 3, size, size], generator: new Generator(22));
        Dictionary<string, Tensor> expected = ReferenceModels.Float64Taps(reference, images, taps);
        try
        {
            var variants = new List<(string Precision, bool Fold)> { ("fp32", true), ("bf16", true) };
            if (info.Family == "resnet" && architecture != BuiltInModels.ResNet18ImageNet)
            {
                variants.Add(("fp32", false));
            }
            foreach ((string precision, bool fold) in variants)
            {
                using InferenceModel model = TestKernels.Prepare(ReferenceModels.CopyOf(reference, info), precision, size, batch: 2, fold);
                using var scope = NewDisposeScope();
                using var noGrad = no_grad();
                Dictionary<string, Tensor> actual = model.ForwardTaps(model.PrepareInput(images), taps);
                string worst = "";
                double worstError = 0;
                foreach (string tap in taps)
                {
                    (double error, double cosine) = ReferenceModels.Compare(actual[tap], expected[tap]);
                    if (error > worstError)
                    {
                        (worst, worstError) = (tap, error);
                    }
                    string where = $"{architecture} {precision}{(fold ? "" : " unfolded")} at {tap}: relative error {error:G3}, cosine {cosine:F6}";
                    if (precision == "fp32")
                    {
                        // float32 against float64 through the whole network: rounding alone stays near 1e-6.
                        error.ShouldBeLessThan(1e-4, where);
                    }
                    else
                    {
                        // bf16 keeps 8 bits of mantissa at every layer: directions agree, values to a few percent.
                        cosine.ShouldBeGreaterThan(0.99, where);
                        error.ShouldBeLessThan(0.25, where);
                    }
                }
                output.WriteLine($"{architecture} {precision}{(fold ? "" : " unfolded")}: {taps.Length} taps, worst {worst} ({worstError:G3}); {model.Routes.Count} convolution configurations, {model.Routes.Count(r => r.Value != Cluster.GpuWorker.Kernels.ConvolutionPath.Native)} rerouted");
            }
        }
        finally
        {
            foreach (Tensor t in expected.Values)
            {
                t.Dispose();
            }
        }
    }
}
