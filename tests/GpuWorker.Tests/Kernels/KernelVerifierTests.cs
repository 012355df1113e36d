using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Kernels;
using Cluster.GpuWorker.Models;
using Shouldly;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Kernels;

/// <summary>
/// The check end to end, with its probes in real child processes (`gpu-worker probe-kernels`): crashing, wrong and
/// hung kernels are injected, since this machine's CPU may have none of its own.
/// </summary>
public sealed class KernelVerifierTests : IDisposable
{
    private static readonly ConvolutionGeometry s_pointwise = new(64, 128, 1, 1, 2, 2, 0, 0, 1, 1, 1, HasBias: true);
    private static readonly ConvolutionGeometry s_threeByThree = new(32, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, HasBias: false);
    private readonly string _cache = Path.Combine(Path.GetTempPath(), $"kernel-verifier-test-{Guid.NewGuid():N}");

    public KernelVerifierTests() => TorchRuntime.Initialize();

    public void Dispose()
    {
        if (Directory.Exists(_cache))
        {
            Directory.Delete(_cache, recursive: true);
        }
    }

    private static ConvolutionConfig Config(ConvolutionGeometry g, long batch = 8) =>
        new(g, batch, 14, 14, ScalarType.Float32, TensorLayout.ChannelsLast, TensorLayout.ChannelsLast, "cpu", 1, KernelPass.Forward);

    private KernelVerifier Verifier(params InjectedFault[] faults) =>
        new(new KernelVerifierOptions { CacheDirectory = _cache, Faults = faults, ProbeTimeout = TimeSpan.FromSeconds(60) });

    [Fact]
    public void A_kernel_that_kills_its_probe_is_recorded_as_crashed_and_rerouted_and_the_check_goes_on()
    {
        KernelVerifier verifier = Verifier(new InjectedFault(ConvolutionPath.Native, "k1x1", FaultKind.Crash));
        ConvolutionConfig pointwise = Config(s_pointwise), other = Config(s_threeByThree);

        IReadOnlyDictionary<ConvolutionConfig, ConvolutionPath> paths = verifier.Resolve([pointwise, other]);

        paths[pointwise].ShouldBeOneOf(ConvolutionPath.Pointwise, ConvolutionPath.Contiguous);
        paths.ShouldContainKey(other);
        KernelReroute reroute = verifier.Report.Rerouted.Single(r => r.Config == pointwise.Key);
        reroute.Native.ShouldBe(ProbeOutcome.Crashed);
        verifier.Report.Summary.ShouldContain("crashed");
        // The probe that died was replaced by a new process for the probes after it.
        verifier.ProbeProcessesStarted.ShouldBeGreaterThanOrEqualTo(2);
    }

    [Fact]
    public void Verdicts_are_kept_so_a_second_start_on_the_same_machine_probes_nothing()
    {
        ConvolutionConfig[] configs = [Config(s_pointwise), Config(s_threeByThree)];
        IReadOnlyDictionary<ConvolutionConfig, ConvolutionPath> first = Verifier().Resolve(configs);

        KernelVerifier again = Verifier();
        IReadOnlyDictionary<ConvolutionConfig, ConvolutionPath> second = again.Resolve(configs);

        again.ProbeProcessesStarted.ShouldBe(0);
        second.ShouldBe(first);
        File.ReadAllText(again.CacheFile).ShouldContain(CpuIdentity.Current.Fingerprint);
    }

    [Fact]
    public void A_damaged_verdict_file_is_probed_again_not_trusted()
    {
        ConvolutionConfig[] configs = [Config(s_threeByThree)];
        KernelVerifier first = Verifier();
        first.Resolve(configs);
        File.WriteAllText(first.CacheFile, "{ not json");

        KernelVerifier again = Verifier();
        again.Resolve(configs);

        again.ProbeProcessesStarted.ShouldBe(1);
    }

    [Fact]
    public void A_hung_kernel_is_killed_after_the_timeout_and_counted_as_crashed()
    {
        var verifier = new KernelVerifier(new KernelVerifierOptions
        {
            CacheDirectory = _cache,
            Faults = [new InjectedFault(ConvolutionPath.Native, "k3x3", FaultKind.Hang)],
            ProbeTimeout = TimeSpan.FromSeconds(20),
        });
        ConvolutionConfig config = Config(s_threeByThree);

        ConvolutionPath path = verifier.Resolve([config])[config];

        path.ShouldNotBe(ConvolutionPath.Native);
        KernelReroute reroute = verifier.Report.Rerouted.Single();
        reroute.Native.ShouldBe(ProbeOutcome.Crashed);
    }

    [Fact]
    public void A_model_whose_every_native_kernel_is_wrong_still_computes_the_right_features_on_verified_paths()
    {
        // Every native convolution of the model reports wrong: all of them must be rerouted, and the features must
        // still be those of the float64 reference.
        KernelVerifier verifier = Verifier(new InjectedFault(ConvolutionPath.Native, "", FaultKind.Wrong));
        ArchitectureInfo info = ModelCatalog.Find("resnet18");
        using Backbone reference = info.Build(new BackboneOptions(IncludeTop: false));
        ClosedFormWeights.Fill(reference);
        reference.eval();
        using Tensor images = randn([2, 3, 64, 64], generator: new Generator(42));
        string[] taps = ["layer1", "layer3", "avgpool"];
        Dictionary<string, Tensor> expected = ReferenceModels.Float64Taps(reference, images, taps);

        using InferenceModel model = InferenceModel.Prepare(ReferenceModels.CopyOf(reference, info), "fp32", CPU, verifier,
            new KernelPlan(64, [2], get_num_threads()));
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        Dictionary<string, Tensor> actual = model.ForwardTaps(model.PrepareInput(images), taps);

        model.Routes.Count.ShouldBeGreaterThan(5);
        model.Routes.Values.ShouldAllBe(p => p != ConvolutionPath.Native);
        foreach (string tap in taps)
        {
            ReferenceModels.Compare(actual[tap], expected[tap]).RelativeError.ShouldBeLessThan(1e-4, tap);
            expected[tap].Dispose();
        }
    }

    [Fact]
    public void A_batch_size_the_plan_did_not_foresee_is_checked_when_it_first_runs()
    {
        KernelVerifier verifier = Verifier();
        using InferenceModel model = InferenceModel.Prepare(ModelCatalog.Find("resnet18").Build(new BackboneOptions(IncludeTop: false)), "fp32", CPU, verifier,
            new KernelPlan(32, [2], get_num_threads(), "layer2"));
        model.Routes.Keys.ShouldAllBe(c => c.Batch == 2);

        using (var scope = NewDisposeScope())
        using (var noGrad = no_grad())
        {
            model.ForwardTo(model.PrepareInput(randn(3, 3, 32, 32)), "layer2");
        }

        model.Routes.Keys.ShouldContain(c => c.Batch == 3);
        model.Routes.Keys.Where(c => c.Batch == 3).Select(c => c.Geometry).ToHashSet()
            .SetEquals(model.Routes.Keys.Where(c => c.Batch == 2).Select(c => c.Geometry)).ShouldBeTrue();
    }
}
