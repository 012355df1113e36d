using System.Runtime.InteropServices;
using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Images;
using Cluster.GpuWorker.Models;
using Cluster.Storage.Formats;
using Shouldly;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Kernels;

/// <summary>
/// Against PyTorch itself (Fixtures/make_feature_fixtures.py, PyTorch 1.13 from Debian): the same torchvision
/// architecture with the same closed-form weights, the same PNG photos through our decoder and through PIL and
/// torchvision's transforms, and the per-channel mean and maximum of every stage tap must agree. Two implementations
/// that share no code: on the Zen 5 CPU, before the kernel check, ResNets and MobileNets were off by 0.2-0.5 here.
/// </summary>
public sealed class PyTorchFeatureTests(ITestOutputHelper output)
{
    private static string FixtureDirectory => Path.Combine(AppContext.BaseDirectory, "Fixtures");

    public static TheoryData<string> Fixtures =>
    [
        .. Directory.GetFiles(Path.Combine(FixtureDirectory, "features"), "*.safetensors").Select(f => Path.GetFileNameWithoutExtension(f)).Order(StringComparer.Ordinal),
    ];

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void Prepared_features_match_pytorchs_for_the_same_weights_and_images(string architecture)
    {
        TorchRuntime.Initialize();
        using SafetensorsReader fixture = SafetensorsReader.Open(Path.Combine(FixtureDirectory, "features", $"{architecture}.safetensors"));
        string[] taps = fixture.Metadata["taps"].Split(',');
        string[] images = fixture.Metadata["images"].Split(',');
        ArchitectureInfo info = ModelCatalog.Find(architecture);
        int.Parse(fixture.Metadata["input_size"], System.Globalization.CultureInfo.InvariantCulture).ShouldBe(info.InputSize);

        Backbone backbone = info.Build(new BackboneOptions(IncludeTop: false));
        ClosedFormWeights.Fill(backbone).ShouldBe(fixture.Metadata["weights_sha256"], "the closed-form weights differ from the fixture's: the generators disagree");

        // Prepare takes the backbone over (and converts it): the bf16 model is a copy made first.
        var models = new Dictionary<string, Backbone> { ["bf16"] = CopyOf(backbone, info), ["fp32"] = backbone };
        foreach (string precision in (string[])["fp32", "bf16"])
        {
            using InferenceModel model = TestKernels.Prepare(models[precision], precision, info.InputSize, images.Length);
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            Tensor batch = Decode(images, info.Preprocessing);
            Dictionary<string, Tensor> actual = model.ForwardTaps(model.PrepareInput(batch), taps);
            foreach (string tap in taps)
            {
                (Tensor mean, Tensor max) = Statistics(actual[tap].to(float32));
                foreach ((string statistic, Tensor ours) in new[] { ("mean", mean), ("max", max) })
                {
                    Tensor expected = Read(fixture, $"{tap}.{statistic}");
                    ours.shape.ShouldBe(expected.shape, $"{architecture} {tap}.{statistic}");
                    (double error, double cosine) = ReferenceModels.Compare(ours, expected);
                    string where = $"{architecture} {precision} at {tap} ({statistic}): relative error {error:G3}, cosine {cosine:F6}";
                    output.WriteLine(where);
                    if (precision == "fp32")
                    {
                        // Two float32 implementations, different summation orders: agreement near 1e-6.
                        error.ShouldBeLessThan(1e-4, where);
                    }
                    else
                    {
                        cosine.ShouldBeGreaterThan(0.99, where);
                    }
                }
            }
        }
    }

    private static Backbone CopyOf(Backbone source, ArchitectureInfo info) => ReferenceModels.CopyOf(source, info);

    private static Tensor Decode(string[] images, Preprocessing preprocessing)
    {
        var decoder = new ImageDecoder();
        int length = ImageDecoder.ImageLength(preprocessing);
        var buffer = new float[images.Length * length];
        for (int i = 0; i < images.Length; i++)
        {
            ImageDecodeResult result = decoder.Decode(Path.Combine(FixtureDirectory, "images", images[i]), preprocessing, buffer.AsSpan(i * length, length));
            result.IsOk.ShouldBeTrue(result.ToString());
        }
        return tensor(buffer, [images.Length, 3, preprocessing.InputSize, preprocessing.InputSize]);
    }

    /// <summary>Per-channel spatial mean and maximum, as the fixture stores them; a pooled vector as it is.</summary>
    private static (Tensor Mean, Tensor Max) Statistics(Tensor activation)
    {
        if (activation.dim() == 4 && activation.shape[2] * activation.shape[3] > 1)
        {
            return (activation.mean([2, 3]), activation.amax([2, 3]));
        }
        Tensor flat = activation.flatten(1);
        return (flat, flat);
    }

    private static Tensor Read(SafetensorsReader file, string name)
    {
        SafetensorsTensorInfo info = file.GetTensor(name);
        float[] values = MemoryMarshal.Cast<byte, float>(file.ReadTensorBytes(name)).ToArray();
        return tensor(values, info.Shape.ToArray());
    }
}
