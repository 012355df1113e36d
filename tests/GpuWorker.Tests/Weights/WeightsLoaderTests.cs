using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Weights;
using Shouldly;
using TorchSharp;
using static Cluster.GpuWorker.Tests.Weights.WeightFixtures;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Weights;

public sealed class WeightsLoaderTests
{
    public WeightsLoaderTests() => TorchRuntime.Initialize();

    [Fact]
    public void Resnet18_weights_into_resnet34_are_refused_with_the_missing_layers_listed()
    {
        using var resnet18 = torchvision.models.resnet18();
        using var resnet34 = torchvision.models.resnet34();
        var before = Bytes(resnet34.state_dict()["conv1.weight"]);

        var error = Should.Throw<WeightsMismatchException>(() => WeightsLoader.Apply(resnet34, resnet18.state_dict()));

        var report = error.Report;
        report.Unexpected.ShouldBeEmpty();
        report.Mismatched.ShouldBeEmpty();
        report.Loaded.ShouldBe(0);
        report.Missing.ShouldContain("layer1.2.conv1.weight");
        report.Missing.ShouldContain("layer3.5.bn2.running_var");
        report.Missing.ShouldContain("layer4.2.bn1.num_batches_tracked");
        report.Missing.ShouldNotContain("layer1.0.conv1.weight");
        report.Missing.ShouldBe(report.Missing.Order(StringComparer.Ordinal));
        report.Missing.Count.ShouldBe(resnet34.state_dict().Count - resnet18.state_dict().Count);
        error.Message.ShouldContain($"0 loaded, {report.Missing.Count} missing, 0 unexpected, 0 mismatched.");
        error.Message.ShouldContain("  layer1.2.bn1.bias [64] float32");
        error.Message.ShouldContain("  layer1.2.conv1.weight [64, 64, 3, 3] float32");
        error.Message.ShouldContain($"  ... and {report.Missing.Count - 20} more");
        error.Message.ShouldContain("pass strict: false");
        Bytes(resnet34.state_dict()["conv1.weight"]).ShouldBe(before, "a refused strict load leaves the module alone");
    }

    [Fact]
    public void Wrong_shape_is_mismatched_with_both_shapes_in_the_message()
    {
        using var imagenet = torchvision.models.resnet18();
        using var tenClasses = torchvision.models.resnet18(num_classes: 10);

        var error = Should.Throw<WeightsMismatchException>(() => WeightsLoader.Apply(tenClasses, imagenet.state_dict()));

        error.Report.Missing.ShouldBeEmpty();
        error.Report.Unexpected.ShouldBeEmpty();
        error.Report.Mismatched.Select(m => m.Key).ShouldBe(["fc.bias", "fc.weight"]);
        var weight = error.Report.Mismatched[1];
        weight.ExpectedShape.ShouldBe([10L, 512L]);
        weight.ActualShape.ShouldBe([1000L, 512L]);
        error.Message.ShouldContain("  fc.weight: module has [10, 512] float32, weights have [1000, 512] float32");
        error.Message.ShouldContain("  fc.bias: module has [10] float32, weights have [1000] float32");
    }

    [Fact]
    public void Non_strict_load_copies_what_matches_and_reports_the_rest()
    {
        using var imagenet = torchvision.models.resnet18();
        using var tenClasses = torchvision.models.resnet18(num_classes: 10);
        var headBefore = Bytes(tenClasses.state_dict()["fc.weight"]);

        var report = WeightsLoader.Apply(tenClasses, imagenet.state_dict(), strict: false);

        report.Loaded.ShouldBe(imagenet.state_dict().Count - 2);
        report.Mismatched.Count.ShouldBe(2);
        report.IsExactMatch.ShouldBeFalse();
        Bytes(tenClasses.state_dict()["layer4.1.conv2.weight"]).ShouldBe(Bytes(imagenet.state_dict()["layer4.1.conv2.weight"]));
        Bytes(tenClasses.state_dict()["bn1.running_var"]).ShouldBe(Bytes(imagenet.state_dict()["bn1.running_var"]));
        Bytes(tenClasses.state_dict()["fc.weight"]).ShouldBe(headBefore);
    }

    [Fact]
    public void Non_strict_load_lists_unexpected_keys_with_their_shapes()
    {
        using var module = new TinyConvNet();
        using var weights = StateDictFile.Load(WeightFixtures.Path("tiny_convnet.pt"));
        using var extra = zeros(2, 5);
        var withExtra = weights.ToDictionary(pair => pair.Key, pair => pair.Value);
        withExtra["head.weight"] = extra;

        var report = WeightsLoader.Apply(module, withExtra, strict: false);

        report.Unexpected.ShouldBe(["head.weight"]);
        report.Loaded.ShouldBe(9);
        report.ToString().ShouldContain("Unexpected in the weights (the module has no such key) (1):\n  head.weight [2, 5] float32".ReplaceLineEndings());
    }

    [Fact]
    public void Buffers_are_loaded_with_the_parameters()
    {
        using var module = new TinyConvNet();
        using var weights = StateDictFile.Load(WeightFixtures.Path("tiny_convnet.pt"));

        WeightsLoader.Apply(module, weights);

        var state = module.state_dict();
        state["bn1.num_batches_tracked"].item<long>().ShouldBe(2);
        Bytes(state["bn1.running_mean"]).ShouldBe(Expected("tiny_convnet")["bn1.running_mean"].Bytes);
        Bytes(state["bn1.running_var"]).ShouldBe(Expected("tiny_convnet")["bn1.running_var"].Bytes);
    }

    [Fact]
    public void Float64_weights_convert_into_a_float32_module_with_a_note()
    {
        using var module = new TinyConvNet();
        using var source = new TinyConvNet();
        using var scope = NewDisposeScope();
        var doubles = source.state_dict().ToDictionary(
            pair => pair.Key,
            pair => pair.Value.is_floating_point() ? pair.Value.to(float64) : pair.Value);

        var report = WeightsLoader.Apply(module, doubles);

        report.IsExactMatch.ShouldBeTrue();
        report.Notes.ShouldBe(["8 tensors converted from float64 to float32: bn1.bias, bn1.running_mean, bn1.running_var, bn1.weight, conv1.bias and 3 more."]);
        module.state_dict()["fc.weight"].dtype.ShouldBe(float32);
        Bytes(module.state_dict()["fc.weight"]).ShouldBe(Bytes(source.state_dict()["fc.weight"]));
    }

    [Fact]
    public void Float_into_an_integer_buffer_and_narrowing_integers_are_mismatches()
    {
        using var module = new TinyConvNet();
        using var scope = NewDisposeScope();
        var weights = module.state_dict().ToDictionary(pair => pair.Key, pair => pair.Value.clone());
        weights["bn1.num_batches_tracked"] = weights["bn1.num_batches_tracked"].to(int32).to(float32);
        weights["fc.bias"] = weights["fc.bias"].to(int64);

        var error = Should.Throw<WeightsMismatchException>(() => WeightsLoader.Apply(module, weights));

        error.Report.Mismatched.Select(m => m.ToString()).ShouldBe(
        [
            "bn1.num_batches_tracked: module has [] int64, weights have [] float32",
            "fc.bias: module has [3] float32, weights have [3] int64",
        ]);
    }

    [Fact]
    public void Narrower_integer_widens_into_the_module()
    {
        using var module = new TinyConvNet();
        using var scope = NewDisposeScope();
        var weights = module.state_dict().ToDictionary(pair => pair.Key, pair => pair.Value.clone());
        weights["bn1.num_batches_tracked"] = tensor(7, int32);

        var report = WeightsLoader.Apply(module, weights);

        report.Notes.ShouldBe(["1 tensor converted from int32 to int64: bn1.num_batches_tracked."]);
        module.state_dict()["bn1.num_batches_tracked"].item<long>().ShouldBe(7);
    }
}
