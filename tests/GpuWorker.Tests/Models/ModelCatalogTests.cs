using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Models;
using Shouldly;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torchvision.models;

namespace Cluster.GpuWorker.Tests.Models;

public sealed class ModelCatalogTests
{
    public ModelCatalogTests() => TorchRuntime.Initialize();

    public static TheoryData<string> Architectures => new(ModelCatalog.All.Select(a => a.Name));

    /// <summary>
    /// Output shapes per image at each architecture's native input size: facts of the published architectures
    /// (and of Keras' layer names for them), not values read back from this code.
    /// </summary>
    private static readonly Dictionary<string, (string Tap, long[] Shape)[]> s_documentedTaps = new()
    {
        ["resnet18"] = [("conv1", [64, 112, 112]), ("layer1", [64, 56, 56]), ("layer3", [256, 14, 14]), ("layer4", [512, 7, 7]), ("avgpool", [512]), ("fc", [1000])],
        ["resnet34"] = [("conv4_x", [256, 14, 14])],
        ["resnet50"] = [("conv4_block6_out", [1024, 14, 14]), ("layer4", [2048, 7, 7])],
        ["resnet101"] = [("conv4_block23_out", [1024, 14, 14])],
        ["resnet152"] = [("avgpool", [2048])],
        ["vgg11"] = [("block5_pool", [512, 7, 7])],
        ["vgg13_bn"] = [("block2_conv2", [128, 112, 112])],
        ["vgg16"] = [("block1_conv1", [64, 224, 224]), ("block3_pool", [256, 28, 28]), ("block5_pool", [512, 7, 7]), ("fc2", [4096])],
        ["vgg19"] = [("block4_pool", [512, 14, 14]), ("block5_conv4", [512, 14, 14]), ("predictions", [1000])],
        ["vgg19_bn"] = [("block4_pool", [512, 14, 14])],
        ["alexnet"] = [("pool5", [256, 6, 6]), ("fc7", [4096])],
        ["inception_v3"] = [("mixed2", [288, 35, 35]), ("mixed7", [768, 17, 17]), ("mixed10", [2048, 8, 8]), ("avgpool", [2048])],
        ["mobilenet_v2"] = [("out_relu", [1280, 7, 7]), ("avgpool", [1280])],
        ["mobilenet_v3_large"] = [("features.16", [960, 7, 7])],
        ["mobilenet_v3_small"] = [("features.12", [576, 7, 7]), ("predictions", [1000])],
        ["resnet18-imagenet"] = [("layer1", [64, 56, 56]), ("layer3", [256, 14, 14]), ("layer4", [512, 7, 7]), ("avgpool", [512])],
    };

    [Theory]
    [MemberData(nameof(Architectures))]
    public void Every_architecture_builds_and_each_documented_tap_has_the_documented_shape(string architecture)
    {
        ArchitectureInfo info = ModelCatalog.Find(architecture);
        using Backbone model = info.Build();

        var shapes = model.TraceShapes(info.InputSize);

        shapes.Count.ShouldBe(model.Steps.Count);
        // The built-in ImageNet ResNet-18 was exported without its classifier: it ends at the 512-d pool.
        shapes[^1].Shape.ShouldBe(architecture == BuiltInModels.ResNet18ImageNet ? [512L] : [1000L]);
        Backbone.CountParameters(model).ShouldBe(info.ParameterCount);
        model.TapNames.ShouldContain(info.DefaultTap);
        foreach ((string tap, long[] shape) in s_documentedTaps.GetValueOrDefault(architecture, []))
        {
            shapes[model.ResolveTap(tap)].Shape.ShouldBe(shape, $"{architecture} {tap}");
        }
    }

    [Fact]
    public void Running_to_a_tap_stops_there()
    {
        using Backbone model = ModelCatalog.Find("resnet18").Build();
        model.eval();
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();

        model.ForwardTo(zeros(1, 3, 224, 224), "conv3_x").shape.ShouldBe([1L, 128L, 28L, 28L]);
    }

    public static TheoryData<string, Func<nn.Module<Tensor, Tensor>>, Func<nn.Module<Tensor, Tensor>, Backbone>> SameModels => new()
    {
        { "resnet18", () => resnet18(), m => ModelCatalog.ResNetBackbone("resnet18", (TorchSharp.Modules.ResNet)m, [2, 2, 2, 2], includeTop: true) },
        { "resnet50", () => resnet50(), m => ModelCatalog.ResNetBackbone("resnet50", (TorchSharp.Modules.ResNet)m, [3, 4, 6, 3], includeTop: true) },
        { "vgg11_bn", () => vgg11_bn(), m => ModelCatalog.VggBackbone("vgg11_bn", (TorchSharp.Modules.VGG)m, new BackboneOptions()) },
        { "alexnet", () => alexnet(), m => ModelCatalog.AlexNetBackbone((TorchSharp.Modules.AlexNet)m, new BackboneOptions()) },
        { "inception_v3", () => inception_v3(), m => ModelCatalog.InceptionBackbone((TorchSharp.Modules.InceptionV3)m, includeTop: true) },
        { "mobilenet_v2", () => mobilenet_v2(), m => ModelCatalog.MobileNetBackbone("mobilenet_v2", m, includeTop: true, numClasses: null) },
        { "mobilenet_v3_small", () => mobilenet_v3_small(), m => ModelCatalog.MobileNetBackbone("mobilenet_v3_small", m, includeTop: true, numClasses: null) },
    };

    [Theory]
    [MemberData(nameof(SameModels))]
    public void The_steps_compute_exactly_what_the_torchvision_model_computes(
        string name, Func<nn.Module<Tensor, Tensor>> torchvisionModel, Func<nn.Module<Tensor, Tensor>, Backbone> decompose)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        nn.Module<Tensor, Tensor> reference = torchvisionModel();
        reference.eval();
        Backbone steps = decompose(reference);
        steps.eval();
        int size = name == "inception_v3" ? 107 : 64;
        Tensor x = randn([2, 3, size, size], generator: new Generator(11));

        Tensor expected = reference.call(x);
        Tensor actual = steps.forward(x);

        actual.shape.ShouldBe(expected.shape);
        actual.allclose(expected, rtol: 1e-5, atol: 1e-6).ShouldBeTrue();
        steps.state_dict().Keys.ShouldBe(reference.state_dict().Keys, ignoreOrder: true);
    }

    [Fact]
    public void Running_to_a_tap_then_from_it_equals_the_whole_forward_and_leaves_the_activations_unchanged()
    {
        using Backbone vgg = ModelCatalog.Find("vgg11").Build();
        vgg.eval();
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        Tensor x = randn([2, 3, 64, 64], generator: new Generator(3));

        Tensor atConv = vgg.ForwardTo(x, "features.0");
        Tensor cached = atConv.clone();
        Tensor resumed = vgg.ForwardFrom(atConv, "features.0");

        resumed.allclose(vgg.forward(x), rtol: 1e-5, atol: 1e-6).ShouldBeTrue();
        // features.1 is an in-place ReLU: the cached activations must survive it.
        atConv.allclose(cached, rtol: 0, atol: 0).ShouldBeTrue();
    }

    [Fact]
    public void A_new_classifier_has_the_requested_outputs_and_no_top_ends_at_the_global_pool()
    {
        using Backbone five = ModelCatalog.Find("mobilenet_v3_small").Build(new BackboneOptions(NumClasses: 5));
        using Backbone headless = ModelCatalog.Find("resnet18").Build(new BackboneOptions(IncludeTop: false));
        using Backbone vggFive = ModelCatalog.Find("vgg16").Build(new BackboneOptions(NumClasses: 5));

        five.TraceShapes(224)[^1].Shape.ShouldBe([5L]);
        vggFive.state_dict()["classifier.6.weight"].shape.ShouldBe([5L, 4096L]);
        headless.TraceShapes(224)[^1].Shape.ShouldBe([512L]);
        headless.state_dict().Keys.ShouldNotContain("fc.weight");
        headless.IncludeTop.ShouldBeFalse();
    }

    [Fact]
    public void A_cutoff_freezes_the_parameters_of_every_step_up_to_it()
    {
        using Backbone model = ModelCatalog.Find("resnet18").Build();
        long total = Backbone.CountParameters(model);

        model.ParametersUpTo("conv1").ShouldBe(64L * 3 * 7 * 7);
        model.ParametersUpTo("avgpool").ShouldBe(total - (512L * 1000 + 1000));
        model.ParametersUpTo("fc").ShouldBe(total);
        total.ShouldBe(11_689_512L);
    }

    [Fact]
    public void The_built_in_imagenet_resnet18_takes_a_new_head_and_counts_what_each_cutoff_freezes()
    {
        using Backbone model = ModelCatalog.Find("resnet18-imagenet").Build(new BackboneOptions(NumClasses: 10));

        model.TraceShapes(224)[^1].Shape.ShouldBe([10L]);
        // Same convolutions and batch norms as torchvision's resnet18: stem 64*3*7*7 + 2*64.
        model.ParametersUpTo("maxpool").ShouldBe(64L * 3 * 7 * 7 + 2 * 64);
        model.ParametersUpTo("avgpool").ShouldBe(ModelCatalog.Find("resnet18-imagenet").ParameterCount);
        model.ParametersUpTo("fc").ShouldBe(ModelCatalog.Find("resnet18-imagenet").ParameterCount + 512 * 10 + 10);
        // The CNTK graph's last stage is three basic blocks deep (docs/onnx.md): torchvision's layer4 (8,393,728)
        // plus one block of two 512->512 3x3 convolutions and their batch norms' scale and shift.
        (model.ParametersUpTo("layer4") - model.ParametersUpTo("layer3")).ShouldBe(8_393_728L + 2 * 512 * 512 * 9 + 2 * 2 * 512);
    }

    [Fact]
    public void The_built_in_imagenet_resnet18_split_at_each_tap_computes_its_whole_forward_pass_and_trains_only_the_suffix()
    {
        using Backbone model = ModelCatalog.Find("resnet18-imagenet").Build(new BackboneOptions(NumClasses: 10));
        model.eval();
        using var scope = NewDisposeScope();
        // Pixel values minus a mean image span about ±128 (Caffe-style preprocessing); two images.
        Tensor images = randn([2, 3, 224, 224], generator: new Generator(seed: 11)) * 60;
        Tensor whole;
        using (no_grad())
        {
            whole = model.forward(images);
        }
        double scale = whole.abs().max().item<float>();
        foreach (string tap in new[] { "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc" })
        {
            using (no_grad())
            {
                Tensor prefix = model.ForwardTo(images, tap);
                Tensor resumed = model.ForwardFrom(prefix, tap);
                resumed.shape.ShouldBe([2L, 10L], tap);
                double error = (resumed - whole).abs().max().item<float>();
                error.ShouldBeLessThanOrEqualTo(1e-5 * scale, tap);
            }
        }

        // Fine-tuning from layer3 on its cached activations: gradients reach exactly the parameters after the cut.
        Tensor atLayer3;
        using (no_grad())
        {
            atLayer3 = model.ForwardTo(images, "layer3");
        }
        model.train();
        model.ForwardFrom(atLayer3, "layer3").square().mean().backward();
        long withGradient = model.parameters().Where(p => p.grad is not null && p.grad.abs().sum().item<float>() > 0).Sum(p => p.numel());
        withGradient.ShouldBe(Backbone.CountParameters(model) - model.ParametersUpTo("layer3"));
    }

    [Fact]
    public void An_imported_graph_refuses_a_cut_that_a_residual_connection_crosses()
    {
        using BuiltInModel builtIn = BuiltInModels.Load(BuiltInModels.ResNet18ImageNet);
        using Tensor activations = zeros(1, 64, 56, 56);

        // Inside layer1's first block: the block's Add also reads the max-pool output, from before the cut.
        var error = Should.Throw<ArgumentException>(() => builtIn.Network.ForwardFrom(activations, "ReLU261_Output_0"));

        error.Message.ShouldStartWith("ResNet18.onnx: cutting at 'ReLU261_Output_0' does not split the graph: 'Pooling255_Output_0' is computed before the cut and node ");
        error.Message.ShouldNotContain('\n');
    }

    [Fact]
    public void An_unknown_layer_lists_the_valid_ones_closest_first()
    {
        using Backbone vgg = ModelCatalog.Find("vgg19").Build();

        var error = Should.Throw<UnknownNameException>(() => vgg.ResolveTap("block4_pol"));

        error.Message.ShouldStartWith("unknown layer 'block4_pol' for architecture 'vgg19'; valid (closest first): block4_pool");
    }

    [Fact]
    public void An_unknown_architecture_lists_the_valid_ones_closest_first()
    {
        var error = Should.Throw<UnknownNameException>(() => ModelCatalog.Find("resnet51"));

        error.Message.ShouldStartWith("unknown architecture 'resnet51' for this cluster; valid (closest first): resnet50");
    }
}

public sealed class ImageNetClassesTests
{
    [Fact]
    public void The_thousand_imagenet_classes_are_in_head_order()
    {
        ImageNetClasses.Names.Count.ShouldBe(1000);
        ImageNetClasses.Names[0].ShouldBe("tench");
        ImageNetClasses.Names[281].ShouldBe("tabby");
        ImageNetClasses.Names[999].ShouldBe("toilet tissue");
    }
}
