using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Onnx;
using Google.Protobuf;
using Onnx;
using Shouldly;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Onnx;

/// <summary>The built-in model, imported once for the tests below (63 MB of weights).</summary>
public sealed class ResNet18ImageNetFixture : IDisposable
{
    public ResNet18ImageNetFixture()
    {
        TorchRuntime.Initialize();
        Model = BuiltInModels.Load(BuiltInModels.ResNet18ImageNet);
        Model.Network.eval();
        string folder = Path.Combine(BuiltInModels.DefaultDirectory, BuiltInModels.ResNet18ImageNet);
        NetworkBytes = File.ReadAllBytes(Path.Combine(folder, "ResNet18.onnx"));
        PreprocessBytes = File.ReadAllBytes(Path.Combine(folder, "ResNetPreprocess.onnx"));
    }

    public BuiltInModel Model { get; }

    public byte[] NetworkBytes { get; }

    public byte[] PreprocessBytes { get; }

    public void Dispose() => Model.Dispose();
}

public sealed class ResNet18ImageNetTests : IClassFixture<ResNet18ImageNetFixture>
{
    /// <summary>Relative to the features' scale: max |ours - ONNX Runtime| / max |ONNX Runtime|.</summary>
    private const double FeatureTolerance = 1e-3;

    private readonly ResNet18ImageNetFixture _fixture;
    private readonly ITestOutputHelper _output;

    public ResNet18ImageNetTests(ResNet18ImageNetFixture fixture, ITestOutputHelper output)
    {
        _fixture = fixture;
        _output = output;
    }

    [Fact]
    public void Features_match_onnx_runtime_on_real_photos()
    {
        Preprocessing preprocessing = _fixture.Model.Preprocessing;
        IReadOnlyList<string> photos = FixtureImages.All;
        photos.Count.ShouldBeGreaterThanOrEqualTo(4);
        var batch = new List<float>();
        var expected = new List<float[]>();
        foreach (string photo in photos)
        {
            float[] rgb = FixtureImages.DecodeRgb(photo, preprocessing.ResizeTo, preprocessing.InputSize);
            float[] ours = FixtureImages.Prepare(rgb, preprocessing);
            // The reference runs the published preprocessing graph itself, so this also checks what we read from it.
            float[] theirs = OnnxRuntimeReference.Run(_fixture.PreprocessBytes, "OriginalInput", rgb, [1, 3, 224, 224]).Values;
            TestData.RelativeMaxError(ours, theirs).ShouldBeLessThan(1e-6, Path.GetFileName(photo));
            expected.Add(OnnxRuntimeReference.Run(_fixture.NetworkBytes, "Input247", theirs, [1, 3, 224, 224]).Values);
            batch.AddRange(ours);
        }

        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        Tensor features = _fixture.Model.Network.forward(tensor(batch.ToArray(), [photos.Count, 3, 224, 224]));

        features.shape.ShouldBe([photos.Count, 512L, 1L, 1L]);
        for (int i = 0; i < photos.Count; i++)
        {
            float[] ours = features[i].flatten().data<float>().ToArray();
            double error = TestData.RelativeMaxError(ours, expected[i]);
            _output.WriteLine($"{Path.GetFileName(photos[i])}: max |ours - onnxruntime| / max |onnxruntime| = {error:E2} (max feature {expected[i].Max():F3})");
            error.ShouldBeLessThan(FeatureTolerance, Path.GetFileName(photos[i]));
        }
    }

    [Fact]
    public void Every_named_tap_matches_onnx_runtime()
    {
        Preprocessing preprocessing = _fixture.Model.Preprocessing;
        string photo = FixtureImages.All[0];
        float[] input = FixtureImages.Prepare(FixtureImages.DecodeRgb(photo, preprocessing.ResizeTo, preprocessing.InputSize), preprocessing);
        // ONNX Runtime returns only graph outputs, so the taps are added as outputs (their types are in value_info).
        ModelProto model = ModelProto.Parser.ParseFrom(_fixture.NetworkBytes);
        foreach (ModelTap tap in _fixture.Model.Taps.Where(t => t.ValueName != model.Graph.Output[0].Name))
        {
            model.Graph.Output.Add(model.Graph.ValueInfo.Single(v => v.Name == tap.ValueName));
        }
        IReadOnlyDictionary<string, OnnxRuntimeReference.Result> expected = OnnxRuntimeReference.RunMany(
            model.ToByteArray(), "Input247", input, [1, 3, 224, 224], [.. _fixture.Model.Taps.Select(t => t.ValueName)]);

        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        IReadOnlyDictionary<string, Tensor> actual = _fixture.Model.Network.ForwardTaps(
            tensor(input, [1, 3, 224, 224]), [.. _fixture.Model.Taps.Select(t => t.ValueName)]);

        foreach (ModelTap tap in _fixture.Model.Taps)
        {
            Tensor value = actual[tap.ValueName];
            value.shape.ShouldBe([1L, .. tap.Shape], tap.Name);
            double error = TestData.RelativeMaxError(value.data<float>().ToArray(), expected[tap.ValueName].Values);
            _output.WriteLine($"{tap.Name} ({tap.ValueName}, {string.Join("x", tap.Shape)}): {error:E2}");
            error.ShouldBeLessThan(FeatureTolerance, tap.Name);
        }
    }

    [Fact]
    public void Stopping_at_a_tap_returns_that_stage_alone()
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        Tensor input = randn([2, 3, 224, 224]);
        ModelTap layer3 = _fixture.Model.Tap("layer3");

        Tensor stopped = _fixture.Model.Network.Forward(input, layer3.ValueName);
        Tensor full = _fixture.Model.Network.ForwardTaps(input, [layer3.ValueName, _fixture.Model.Network.OutputName])[layer3.ValueName];

        stopped.shape.ShouldBe([2L, 256L, 14L, 14L]);
        stopped.allclose(full).ShouldBeTrue();
    }

    [Fact]
    public void Graph_is_the_documented_resnet18()
    {
        OnnxGraphModule network = _fixture.Model.Network;
        Dictionary<string, int> counts = network.Nodes.GroupBy(n => n.OpType).ToDictionary(g => g.Key, g => g.Count());
        foreach (var count in counts.OrderByDescending(c => c.Value))
        {
            _output.WriteLine($"{count.Key}: {count.Value}");
        }

        counts.ShouldBe(new Dictionary<string, int>
        {
            ["Conv"] = 22,
            ["BatchNormalization"] = 22,
            ["Relu"] = 19,
            ["Add"] = 9,
            ["MaxPool"] = 1,
            // The file's 7x7 AveragePool, loaded as the global pool it is at 224 (so other input sizes run too).
            ["GlobalAveragePool"] = 1,
        }, ignoreOrder: true);
        network.InputName.ShouldBe("Input247");
        network.InputShape.ShouldBe([1L, 3L, 224L, 224L]);
        network.OutputName.ShouldBe("Pooling395_Output_0");
        network.OpsetVersion.ShouldBe(8);
        network.ValueNames.Count.ShouldBe(74);
        network.ValueNames[^1].ShouldBe(network.OutputName);
        _fixture.Model.Taps.Select(t => t.Name).ShouldBe(["maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]);
    }

    [Theory]
    [InlineData(16)]
    [InlineData(64)]
    [InlineData(256)]
    public void The_network_runs_at_other_input_sizes_and_pools_globally(int size)
    {
        // The file's 7x7 pool would fail below 224 (layer4 is 2x2 at 64) and give 2x2 outputs at 256.
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        Tensor image = randn(2, 3, size, size);

        Tensor pooled = _fixture.Model.Network.forward(image);
        Tensor layer4 = _fixture.Model.Network.Forward(image, "ReLU393_Output_0");

        pooled.shape.ShouldBe([2L, 512, 1, 1]);
        float difference = (pooled - layer4.mean([2, 3], keepdim: true)).abs().max().item<float>();
        difference.ShouldBeLessThan(1e-5f);
    }

    [Fact]
    public void Preprocessing_is_bgr_0_to_255_minus_the_published_mean_image()
    {
        Preprocessing preprocessing = _fixture.Model.Preprocessing;

        preprocessing.Order.ShouldBe(ColorOrder.Bgr);
        preprocessing.Scale.ShouldBe(1f);
        preprocessing.InputSize.ShouldBe(224);
        preprocessing.ResizeTo.ShouldBe(224);
        preprocessing.MeanImage.ShouldNotBeNull().Length.ShouldBe(3 * 224 * 224);
        preprocessing.Name.ShouldStartWith("resnet18-imagenet-bgr255-meanimage-");
        float[] channelMeans = [.. Enumerable.Range(0, 3).Select(c => preprocessing.MeanImage.Skip(c * 224 * 224).Take(224 * 224).Average())];
        _output.WriteLine($"mean image channel averages (B, G, R): {string.Join(", ", channelMeans.Select(m => m.ToString("F1")))}");
        // ImageNet pixel means are about B 104, G 117, R 124 on 0..255: the mean image must be in that order and range.
        channelMeans[0].ShouldBeLessThan(channelMeans[2]);
        channelMeans.ShouldAllBe(m => m > 90 && m < 135);
        BuiltInModels.LoadPreprocessing(BuiltInModels.ResNet18ImageNet).Name.ShouldBe(preprocessing.Name);
    }

    [Fact]
    public void Unknown_built_in_model_or_layer_is_refused_with_the_choices()
    {
        Should.Throw<ArgumentException>(() => BuiltInModels.LoadPreprocessing("resnet50"))
            .Message.ShouldContain("resnet18-imagenet");
        Should.Throw<ArgumentException>(() => _fixture.Model.Tap("block4_pool"))
            .Message.ShouldContain("layer4");
        Should.Throw<ArgumentException>(() => _fixture.Model.Network.Forward(zeros(1, 3, 224, 224), "no-such-value"))
            .Message.ShouldContain("'Convolution249_Output_0'");
    }

    [Fact]
    public void Missing_model_files_are_reported_with_where_they_were_expected()
    {
        string empty = Directory.CreateTempSubdirectory("no-models-").FullName;
        try
        {
            Should.Throw<FileNotFoundException>(() => BuiltInModels.Load(BuiltInModels.ResNet18ImageNet, empty))
                .Message.ShouldContain(Path.Combine(empty, "resnet18-imagenet"));
        }
        finally
        {
            Directory.Delete(empty);
        }
    }
}
