using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Kernels;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Tests.Kernels;
using Cluster.GpuWorker.Training;
using Cluster.Storage.Formats;
using Shouldly;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Training;

/// <summary>
/// Fine-tuning the layers after a cutoff on its activations, against PyTorch 1.13's own training steps of the same
/// network, weights and activations (Fixtures/training/make_training_fixtures.py).
/// </summary>
public sealed class SuffixTrainerTests(ITestOutputHelper output)
{
    private static readonly long[] s_labels = [3, 1, 4, 9];

    static SuffixTrainerTests() => TorchRuntime.Initialize();

    [Theory]
    [InlineData("sgd")]
    [InlineData("adamw")]
    public void Three_steps_from_layer3_match_pytorchs_and_leave_the_frozen_prefix_bit_identical(string optimizer)
    {
        using Backbone model = ModelCatalog.Find("resnet18").Build(new BackboneOptions(NumClasses: 10));
        ClosedFormWeights.Fill(model);
        Dictionary<string, Tensor> frozenBefore = model.state_dict()
            .Where(p => !p.Key.StartsWith("layer4.", StringComparison.Ordinal) && !p.Key.StartsWith("fc.", StringComparison.Ordinal))
            .ToDictionary(p => p.Key, p => p.Value.clone());
        OptimizerSettings settings = optimizer == "sgd"
            ? new OptimizerSettings(OptimizerKind.Sgd, 0.01, Momentum: 0.9, WeightDecay: 1e-4)
            : new OptimizerSettings(OptimizerKind.AdamW, 1e-3, WeightDecay: 0.01);
        using var trainer = new SuffixTrainer(model, "layer3", settings, TestKernels.Verifier, new KernelPlan(224, [4], get_num_threads()));
        using Tensor activations = (tensor(ClosedFormWeights.Values("activations.layer3", [4, 256, 14, 14], false), [4, 256, 14, 14]) * 20).clamp_min(0);
        using Tensor labels = tensor(s_labels);

        double[] losses = [.. Enumerable.Range(0, 3).Select(_ => trainer.Step(activations, labels).Loss)];

        using SafetensorsReader fixture = SafetensorsReader.Open(Path.Combine(AppContext.BaseDirectory, "Fixtures", "training", "resnet18-training-steps.safetensors"));
        float[] expectedLosses = Floats(fixture, $"{optimizer}.losses");
        output.WriteLine($"{optimizer} losses: ours {string.Join(", ", losses.Select(l => l.ToString("F6")))}; PyTorch {string.Join(", ", expectedLosses.Select(l => l.ToString("F6")))}");
        for (int i = 0; i < 3; i++)
        {
            losses[i].ShouldBe(expectedLosses[i], 1e-5 * Math.Abs(expectedLosses[i]), $"loss of step {i + 1}");
        }
        Dictionary<string, Tensor> state = model.state_dict();
        // SGD's update is linear in the gradient, so float32 reordering stays at float32 noise (measured ≤ 1e-7 relative).
        // Adam divides by the gradient's own running magnitude, so where a gradient is ~0 a float32 difference in it can
        // move a weight by up to lr; measured: weights within 5e-8, the batch norm's running mean (which sums every
        // weight of the block before it) within 5e-5 relative. Hence its wider tolerance.
        double tolerance = optimizer == "sgd" ? 2e-5 : 2e-4;
        foreach (string key in new[] { "fc.weight", "fc.bias", "layer4.1.bn2.weight", "layer4.1.bn2.running_mean" })
        {
            CompareToFixture(state[key], fixture, $"{optimizer}.{key}", tolerance);
        }
        using Tensor firstFilters = state["layer4.0.conv1.weight"][..2];
        CompareToFixture(firstFilters, fixture, $"{optimizer}.layer4.0.conv1.weight[:2]", tolerance);
        foreach ((string key, Tensor before) in frozenBefore)
        {
            Same(state[key], before).ShouldBeTrue($"{key} is frozen and must not change");
        }
    }

    [Fact]
    public void Fine_tuning_every_layer_from_images_with_a_lower_backbone_rate_matches_pytorch()
    {
        using Backbone model = ModelCatalog.Find("resnet18").Build(new BackboneOptions(NumClasses: 10));
        ClosedFormWeights.Fill(model);
        var settings = new OptimizerSettings(OptimizerKind.Sgd, 0.01, Momentum: 0.9, WeightDecay: 1e-4, BackboneLearningRate: 0.001);
        using var trainer = new SuffixTrainer(model, cutoff: null, settings, TestKernels.Verifier, new KernelPlan(64, [4], get_num_threads()));
        using Tensor images = tensor(ClosedFormWeights.Values("images.64", [4, 3, 64, 64], false), [4, 3, 64, 64]) * 20;
        using Tensor labels = tensor(s_labels);

        double[] losses = [.. Enumerable.Range(0, 2).Select(_ => trainer.Step(images, labels).Loss)];

        using SafetensorsReader fixture = SafetensorsReader.Open(Path.Combine(AppContext.BaseDirectory, "Fixtures", "training", "resnet18-training-steps.safetensors"));
        float[] expectedLosses = Floats(fixture, "all.losses");
        output.WriteLine($"fine-tune-all losses: ours {string.Join(", ", losses.Select(l => l.ToString("F6")))}; PyTorch {string.Join(", ", expectedLosses.Select(l => l.ToString("F6")))}");
        for (int i = 0; i < 2; i++)
        {
            losses[i].ShouldBe(expectedLosses[i], 1e-5 * Math.Abs(expectedLosses[i]), $"loss of step {i + 1}");
        }
        trainer.TrainableParameters.ShouldBe(Backbone.CountParameters(model));
        Dictionary<string, Tensor> state = model.state_dict();
        // conv1 moves at the backbone's rate and fc at the head's: a rate applied to the wrong group would not match.
        foreach (string key in new[] { "fc.weight", "conv1.weight", "layer1.0.bn1.running_mean" })
        {
            CompareToFixture(state[key], fixture, $"all.{key}", 2e-5);
        }
    }

    [Fact]
    public void The_built_in_imagenet_graph_fine_tunes_its_suffix_and_keeps_its_prefix_and_statistics()
    {
        using Backbone model = ModelCatalog.Find("resnet18-imagenet").Build(new BackboneOptions(NumClasses: 3));
        using (no_grad())
        {
            // The new head from a seeded generator, not torch's global one (other tests draw from it in parallel).
            Dictionary<string, Tensor> head = model.state_dict();
            head["fc.weight"].copy_(randn(head["fc.weight"].shape, generator: new Generator(seed: 5)) * 0.01);
            head["fc.bias"].zero_();
        }
        Dictionary<string, Tensor> before = model.state_dict().ToDictionary(p => p.Key, p => p.Value.clone());
        using Tensor images = randn([6, 3, 224, 224], generator: new Generator(seed: 4)) * 60;
        using Tensor labels = tensor(new long[] { 0, 1, 2, 0, 1, 2 });
        Tensor atLayer3;
        using (no_grad())
        {
            model.eval();
            atLayer3 = model.ForwardTo(images, "layer3");
        }
        using var trainer = new SuffixTrainer(model, "layer3", new OptimizerSettings(OptimizerKind.Sgd, 1e-3));

        double first = trainer.Evaluate(atLayer3, labels, batchSize: 4).Loss;
        var shuffle = new Generator(seed: 8);
        EpochMetrics[] epochs = [.. Enumerable.Range(0, 10).Select(_ => trainer.TrainEpoch(atLayer3, labels, batchSize: 4, shuffle))];
        EpochMetrics after = trainer.Evaluate(atLayer3, labels, batchSize: 4);

        // Batches of 4 and a last one of 2: every row is trained once per epoch.
        epochs.ShouldAllBe(e => e.Rows == 6 && e.ImagesPerSecond > 0);

        output.WriteLine($"loss {first:F4} -> {after.Loss:F4}, accuracy {after.Accuracy:P0}; epochs {string.Join(", ", epochs.Select(e => e.Loss.ToString("F4")))}");
        after.Loss.ShouldBeLessThan(first);
        Dictionary<string, Tensor> state = model.state_dict();
        long changed = 0;
        long unchanged = 0;
        foreach ((string key, Tensor value) in state)
        {
            if (Same(value, before[key]))
            {
                unchanged += value.numel();
            }
            else
            {
                changed += value.numel();
            }
        }
        // Every tensor of the prefix (up to layer3) and every running statistic is bit-identical; the suffix moved.
        long prefixParameters = model.ParametersUpTo("layer3");
        long statistics = model.named_buffers().Sum(b => b.buffer.numel());
        unchanged.ShouldBeGreaterThanOrEqualTo(prefixParameters + statistics);
        changed.ShouldBeGreaterThan(0);
        changed.ShouldBeLessThanOrEqualTo(Backbone.CountParameters(model) - prefixParameters);
        atLayer3.Dispose();
    }

    [Fact]
    public void A_cutoff_with_nothing_after_it_and_a_bad_rate_are_refused_with_one_line()
    {
        using Backbone model = ModelCatalog.Find("resnet18").Build(new BackboneOptions(NumClasses: 4));

        Should.Throw<ArgumentException>(() => new SuffixTrainer(model, "fc", new OptimizerSettings(OptimizerKind.Sgd, 0.01)))
            .Message.ShouldBe("cutoff 'fc' is the last layer of resnet18: nothing after it would train");
        Should.Throw<ArgumentException>(() => new SuffixTrainer(model, "layer3", new OptimizerSettings(OptimizerKind.Sgd, 0)))
            .Message.ShouldBe("optimizer sgd: learning rate 0: must be a positive number");
        Should.Throw<UnknownNameException>(() => new SuffixTrainer(model, "layer9", new OptimizerSettings(OptimizerKind.Sgd, 0.01)))
            .Message.ShouldStartWith("unknown layer 'layer9' for architecture 'resnet18'");
        Should.Throw<UnknownNameException>(() => OptimizerSettings.Parse("rmsprop"))
            .Message.ShouldStartWith("unknown optimizer 'rmsprop' for a trial; valid (closest first): ");
    }

    private void CompareToFixture(Tensor actual, SafetensorsReader fixture, string name, double tolerance)
    {
        float[] expected = Floats(fixture, name);
        float[] ours = actual.contiguous().data<float>().ToArray();
        ours.Length.ShouldBe(expected.Length, name);
        double scale = expected.Max(v => Math.Abs(v));
        double error = ours.Zip(expected).Max(p => Math.Abs(p.First - p.Second));
        output.WriteLine($"{name}: max |ours - PyTorch| {error:E2} (largest {scale:F4})");
        error.ShouldBeLessThanOrEqualTo(tolerance * Math.Max(scale, 1e-3), name);
    }

    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    private static float[] Floats(SafetensorsReader reader, string name)
    {
        byte[] bytes = reader.ReadTensorBytes(name);
        var values = new float[bytes.Length / 4];
        Buffer.BlockCopy(bytes, 0, values, 0, bytes.Length);
        return values;
    }
}
