using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Kernels;
using Cluster.GpuWorker.Models;
using Shouldly;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Kernels;

/// <summary>
/// The backward passes training will run, checked the same way (<see cref="KernelPass.Backward"/>): gradients through
/// checked convolutions against float64, at the native input size, NCHW and channels-last. On the Zen 5 machine the
/// unchecked forward of ResNet's 1×1 shortcuts is wrong in training too, and ResNet-50's crash.
/// Through a whole deep network, float32 gradients differ from float64 ones by up to a few percent whichever way the
/// convolutions are computed (a ReLU whose input is near zero passes the gradient in one and not the other), so deep
/// networks are checked block by block: one block on the reference's own activations, where the comparison is tight.
/// </summary>
public sealed class TrainingKernelTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Weight_gradients_of_a_whole_resnet18_through_checked_kernels_match_float64(bool channelsLast)
    {
        TorchRuntime.Initialize();
        (Backbone reference, Backbone model, Func<Tensor, Tensor> layout) = Models("resnet18", channelsLast);
        using (reference)
        using (model)
        {
            using Tensor images = randn([2, 3, 224, 224], generator: new Generator(52));
            Dictionary<string, Tensor> ours = Gradients(model, x => model.forward(x), layout(images)).Weights;
            reference.to(float64);
            Dictionary<string, Tensor> expected = Gradients(reference, x => reference.forward(x), images.to(float64)).Weights;

            ours.Count.ShouldBe(20);
            AssertClose($"resnet18{(channelsLast ? " channels-last" : "")}", ours, expected, model);
        }
    }

    [Theory]
    [InlineData("inception_v3", "Mixed_6a", "Mixed_6b", false)] // 1x7 and 7x1 convolutions
    [InlineData("inception_v3", "Mixed_6a", "Mixed_6b", true)]
    [InlineData("mobilenet_v2", "features.3", "features.4", true)] // depthwise and pointwise
    [InlineData("resnet50", "layer2", "layer3.0", true)] // 1x1 bottlenecks and the stride-2 shortcut
    public void Gradients_of_one_block_on_real_activations_through_checked_kernels_match_float64(string architecture, string before, string block, bool channelsLast)
    {
        TorchRuntime.Initialize();
        (Backbone reference, Backbone model, Func<Tensor, Tensor> layout) = Models(architecture, channelsLast);
        using (reference)
        using (model)
        {
            int size = ModelCatalog.Find(architecture).InputSize;
            reference.to(float64);
            Func<Tensor, Tensor> run = reference.Steps[reference.ResolveTap(block)].Run;
            Func<Tensor, Tensor> ourRun = model.Steps[model.ResolveTap(block)].Run;
            (Tensor activations, Dictionary<string, Tensor> expected, Tensor expectedInputGradient, ulong seed) = WellConditioned(reference, run, before, size);
            output.WriteLine($"{architecture} {block}: images of seed {seed}");
            using Tensor input = activations.to(float32);
            (Dictionary<string, Tensor> ours, Tensor ourInputGradient) = Gradients(model, ourRun, layout(input), withInput: true);

            string name = $"{architecture} {block}{(channelsLast ? " channels-last" : "")}";
            ours = ours.Where(g => g.Key.StartsWith(block + ".", StringComparison.Ordinal)).ToDictionary();
            expected = expected.Where(g => g.Key.StartsWith(block + ".", StringComparison.Ordinal)).ToDictionary();
            ours.Count.ShouldBeGreaterThan(2);
            ours[$"{block} input"] = ourInputGradient;
            expected[$"{block} input"] = expectedInputGradient;
            AssertClose(name, ours, expected, model);
        }
    }

    /// <summary>
    /// The block's input (the reference's own activations, rounded to float32 as ours get them) and its float64
    /// gradients, for the first images (seeds from 54) on which the comparison means something: where a ReLU's input
    /// lies within float32's resolution of its threshold (MobileNet's ReLU6 met an input 4e-7 from 6 with seed 54, on a
    /// Zen 3 machine), any float32 computation, through any kernel or none (im2col), passes the gradient where float64
    /// stops it, and one flipped gate moves a weight gradient by 0.3%. So the float64 gradients are computed again on
    /// the input nudged by about what float32 arithmetic errs by (2^-20 relative, 8 rounding steps: a nudge of one step
    /// moves nothing across a threshold); inputs whose gradients then move by more than a tenth of the tolerance are
    /// ill-conditioned and the next seed is taken. A wrong kernel is off by percents on any input.
    /// </summary>
    private static (Tensor Activations, Dictionary<string, Tensor> Gradients, Tensor InputGradient, ulong Seed) WellConditioned(
        Backbone reference, Func<Tensor, Tensor> run, string before, int size)
    {
        for (ulong seed = 54; seed < 62; seed++)
        {
            using Tensor images = randn([2, 3, size, size], generator: new Generator(seed));
            Tensor activations;
            using (no_grad())
            {
                activations = reference.ForwardTo(images.to(float64), before).to(float32).to(float64);
            }
            (Dictionary<string, Tensor> expected, Tensor inputGradient) = Gradients(reference, run, activations, withInput: true);
            using Tensor nudge = randn(activations.shape, generator: new Generator(seed + 1000), dtype: float64) * Math.Pow(2, -20);
            using Tensor nudged = activations * (nudge + 1);
            (Dictionary<string, Tensor> moved, Tensor movedInput) = Gradients(reference, run, nudged, withInput: true);
            double worst = Math.Max(moved.Max(g => ReferenceModels.Compare(g.Value.unsqueeze(0), expected[g.Key].unsqueeze(0)).RelativeError),
                ReferenceModels.Compare(movedInput.unsqueeze(0), inputGradient.unsqueeze(0)).RelativeError);
            if (worst < 2e-5)
            {
                return (activations, expected, inputGradient, seed);
            }
        }
        throw new InvalidOperationException("no well-conditioned input among 8 seeds: the block's float64 gradients move with float32 rounding");
    }

    /// <summary>A float64 reference with closed-form weights and its float32 copy, checked for backward in the given layout.</summary>
    private static (Backbone Reference, Backbone Model, Func<Tensor, Tensor> Layout) Models(string architecture, bool channelsLast)
    {
        ArchitectureInfo info = ModelCatalog.Find(architecture);
        // Closed-form weights (those of the PyTorch fixtures): the same model in every run.
        Backbone reference = info.Build(new BackboneOptions(IncludeTop: false));
        ClosedFormWeights.Fill(reference);
        // Batch norms with their running statistics: with two images, training-mode batch statistics would amplify
        // float32 rounding by cancellation and blur what is checked here, the convolutions.
        reference.eval();
        Backbone model = ReferenceModels.CopyOf(reference, info);
        Func<Tensor, Tensor> layout = channelsLast ? TensorLayouts.ToChannelsLast : x => x.alias();
        if (channelsLast)
        {
            InferenceModel.ToChannelsLast(model);
        }
        model.eval();
        model.CheckKernels(TestKernels.Verifier, new KernelPlan(info.InputSize, [2], get_num_threads(), Pass: KernelPass.Backward), layout);
        return (reference, model, layout);
    }

    private void AssertClose(string name, Dictionary<string, Tensor> ours, Dictionary<string, Tensor> expected, Backbone model)
    {
        ours.Keys.ShouldBe(expected.Keys, ignoreOrder: true);
        double worst = 0;
        foreach ((string parameter, Tensor gradient) in ours)
        {
            (double error, _) = ReferenceModels.Compare(gradient.unsqueeze(0), expected[parameter].unsqueeze(0));
            worst = Math.Max(worst, error);
            // float32 against float64: rounding alone stays near 1e-6 (5e-5 at ResNet-18's first layer).
            error.ShouldBeLessThan(2e-4, $"{name}: gradient of {parameter}, relative error {error:G3}");
        }
        ConvolutionRoutes routes = model.Router.Routes!;
        routes.Paths.Keys.ShouldContain(c => c.Pass == KernelPass.Backward);
        routes.Paths.Keys.ShouldNotContain(c => c.Pass == KernelPass.Forward, "every convolution ran with gradients");
        output.WriteLine($"{name}: {ours.Count} gradients, worst relative error {worst:G3}; {routes.Paths.Count} configurations checked for backward, " +
            $"{routes.Paths.Count(r => r.Value != ConvolutionPath.Native)} rerouted");
    }

    /// <summary>The gradients of every convolution weight (and of the input) for a fixed projection of the output.</summary>
    private static (Dictionary<string, Tensor> Weights, Tensor Input) Gradients(Backbone model, Func<Tensor, Tensor> run, Tensor input, bool withInput = false)
    {
        model.zero_grad();
        Tensor x = withInput ? input.detach().clone().requires_grad_(true) : input;
        if (withInput && input.dim() == 4 && TensorLayouts.Of(input) == TensorLayout.ChannelsLast)
        {
            x = TensorLayouts.ToChannelsLast(input.detach()).requires_grad_(true);
        }
        using (var scope = NewDisposeScope())
        {
            Tensor features = run(x);
            Tensor projection = randn(features.shape[1..], generator: new Generator(53)).to(features.dtype);
            (features * projection).sum().backward();
        }
        Dictionary<string, Tensor> weights = model.named_parameters()
            .Where(p => p.parameter.dim() == 4 && p.parameter.grad is not null)
            .ToDictionary(p => p.name, p => p.parameter.grad!.detach().to(float64).contiguous().clone());
        return (weights, withInput ? x.grad!.detach().to(float64).contiguous() : zeros(1));
    }
}
