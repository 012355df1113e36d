using Cluster.Contracts.SelfTest;
using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.SelfTest;
using Cluster.Hosting;
using Cluster.GpuWorker.Tests.Kernels;
using Shouldly;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests;

public sealed class TorchSharpTests
{
    public TorchSharpTests() => TorchRuntime.Initialize();

    [Fact]
    public void Convolution_through_libtorch_matches_a_direct_computation()
    {
        // Loading libtorch at all is the first thing under test: on Debian 12 it only loads with the build's GLIBCXX fix.
        var generator = new Generator(seed: 7);
        using Tensor input = randn([2, 3, 7, 6], generator: generator);
        using Tensor weight = randn([4, 3, 3, 3], generator: generator);
        using Tensor bias = randn([4], generator: generator);

        using Tensor output = nn.functional.conv2d(input, weight, bias, padding: [1, 1]);

        output.shape.ShouldBe([2L, 4L, 7L, 6L]);
        float[] x = input.data<float>().ToArray();
        float[] w = weight.data<float>().ToArray();
        float[] b = bias.data<float>().ToArray();
        float[] y = output.data<float>().ToArray();
        for (int n = 0; n < 2; n++)
        {
            for (int o = 0; o < 4; o++)
            {
                for (int i = 0; i < 7; i++)
                {
                    for (int j = 0; j < 6; j++)
                    {
                        double expected = b[o];
                        for (int c = 0; c < 3; c++)
                        {
                            for (int ki = 0; ki < 3; ki++)
                            {
                                for (int kj = 0; kj < 3; kj++)
                                {
                                    int ii = i + ki - 1;
                                    int jj = j + kj - 1;
                                    if (ii is >= 0 and < 7 && jj is >= 0 and < 6)
                                    {
                                        expected += x[((n * 3 + c) * 7 + ii) * 6 + jj] * w[((o * 3 + c) * 3 + ki) * 3 + kj];
                                    }
                                }
                            }
                        }
                        y[((n * 4 + o) * 7 + i) * 6 + j].ShouldBe((float)expected, 1e-4f);
                    }
                }
            }
        }
    }

    [Fact]
    public void Self_test_computation_is_deterministic_and_has_the_expected_shape()
    {
        var job = new RunSelfTest { JobId = Guid.NewGuid(), ImageSize = 20, Layers = 3 };

        SelfTestOutcome first = SelfTestComputation.Run(job, CPU, TestKernels.Verifier, CancellationToken.None);
        SelfTestOutcome second = SelfTestComputation.Run(job, CPU, TestKernels.Verifier, CancellationToken.None);

        first.OutputShape.ShouldBe("1x16x20x20");
        first.Checksum.ShouldBe(second.Checksum, 1e-9);
        first.Checksum.ShouldBeGreaterThan(0);
        first.TorchVersion.ShouldStartWith("2.10");
    }

    [Fact]
    public void Self_test_checksum_is_the_float64_value_of_the_same_stack()
    {
        var job = new RunSelfTest { JobId = Guid.NewGuid(), ImageSize = 24, Layers = 5 };

        SelfTestOutcome outcome = SelfTestComputation.Run(job, CPU, TestKernels.Verifier, CancellationToken.None);

        // The same closed-form inputs and weights (made in float32, as the computation makes them), written out again
        // here, then the convolutions in float64 through libtorch's reference kernels.
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        Tensor x = linspace(-1.0, 1.0, 3L * 24 * 24, dtype: float32).reshape(1, 3, 24, 24).to(float64);
        for (int layer = 0; layer < 5; layer++)
        {
            int inChannels = layer == 0 ? 3 : 16;
            Tensor weight = sin(arange(16 * inChannels * 9, dtype: float32) * (0.37 + (layer % 7) * 0.01)).reshape(16, inChannels, 3, 3) / Math.Sqrt(inChannels * 9);
            x = nn.functional.relu(nn.functional.conv2d(x, weight.to(float64), padding: [1, 1]));
        }
        double expected = x.sum().item<double>();
        outcome.Checksum.ShouldBe(expected, Math.Abs(expected) * 1e-5);
    }

    [Fact]
    public void Self_test_computation_depends_on_its_inputs()
    {
        SelfTestOutcome three = SelfTestComputation.Run(new RunSelfTest { JobId = Guid.NewGuid(), ImageSize = 16, Layers = 3 }, CPU, TestKernels.Verifier, CancellationToken.None);
        SelfTestOutcome four = SelfTestComputation.Run(new RunSelfTest { JobId = Guid.NewGuid(), ImageSize = 16, Layers = 4 }, CPU, TestKernels.Verifier, CancellationToken.None);

        three.Checksum.ShouldNotBe(four.Checksum);
    }

    [Fact]
    public void Self_test_computation_stops_when_cancelled()
    {
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();

        Should.Throw<OperationCanceledException>(() =>
            SelfTestComputation.Run(new RunSelfTest { JobId = Guid.NewGuid(), ImageSize = 16, Layers = 1000 }, CPU, TestKernels.Verifier, cancelled.Token));
    }

    [Theory]
    [InlineData("cpu")]
    [InlineData(" CPU ")]
    public void Cpu_device_is_accepted(string requested)
    {
        TorchDevice.Resolve(requested).Name.ShouldBe("cpu");
    }

    [Theory]
    [InlineData("cuda")]
    [InlineData("cuda:1")]
    public void Cuda_device_without_cuda_fails_with_one_clear_line(string requested)
    {
        if (cuda.is_available())
        {
            return; // A CUDA build on a GPU machine accepts it; the check below is for CPU builds.
        }
        var error = Should.Throw<ClusterConfigurationException>(() => TorchDevice.Resolve(requested));
        error.Message.ShouldContain($"--device {requested}");
        error.Message.ShouldContain("TorchBackend=cuda");
        error.Message.ShouldNotContain('\n');
    }

    [Theory]
    [InlineData("tpu")]
    [InlineData("cuda:x")]
    [InlineData("")]
    public void Unknown_device_is_refused_with_the_valid_choices(string requested)
    {
        var error = Should.Throw<ClusterConfigurationException>(() => TorchDevice.Resolve(requested));
        error.Message.ShouldContain("cpu, cuda, cuda:N");
    }
}
