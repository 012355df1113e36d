using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Onnx;
using Shouldly;
using TorchSharp;
using TorchSharp.Modules;
using static Cluster.GpuWorker.Tests.Onnx.TestGraph;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Onnx;

public sealed class OnnxImportTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("onnx-import-").FullName;

    public OnnxImportTests() => TorchRuntime.Initialize();

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private static string ResNet18Path =>
        Path.Combine(BuiltInModels.DefaultDirectory, BuiltInModels.ResNet18ImageNet, "ResNet18.onnx");

    [Fact]
    public void Unsupported_op_fails_naming_the_file_the_node_and_the_op()
    {
        string path = new TestGraph()
            .Input("x", 1, 4, 8).RandomFloats("w", 1, 1, 16, 4).RandomFloats("r", 2, 1, 16, 4)
            .NamedNode("foo", "LSTM", ["x", "w", "r"], ["y"], Int("hidden_size", 4))
            .Output("y")
            .WriteTo(_directory, "ResNet18.onnx");

        var error = Should.Throw<OnnxImportException>(() => OnnxImporter.Import(path));

        error.Message.ShouldStartWith("ResNet18.onnx: node 'foo' uses op 'LSTM', which this importer does not support (supported: ");
        error.Message.ShouldContain("Conv");
        error.Message.ShouldNotContain('\n');
    }

    [Fact]
    public void Op_from_another_domain_is_named_with_its_domain()
    {
        string path = new TestGraph()
            .Input("x", 1, 3)
            .NamedNode("fused", "FusedGemm", ["x"], ["y"])
            .Output("y")
            .WriteTo(_directory);
        path = Rewrite(path, model => model.Graph.Node[0].Domain = "com.microsoft");

        Should.Throw<OnnxImportException>(() => OnnxImporter.Import(path))
            .Message.ShouldContain("node 'fused' uses op 'com.microsoft:FusedGemm'");
    }

    [Theory]
    [InlineData(2)]
    [InlineData(100)]
    [InlineData(5_000)]
    [InlineData(31_000_000)]
    public void Truncated_onnx_file_fails_with_one_clear_line_naming_the_file(int keptBytes)
    {
        string path = Path.Combine(_directory, "ResNet18-truncated.onnx");
        using (FileStream source = File.OpenRead(ResNet18Path))
        using (FileStream target = File.Create(path))
        {
            var buffer = new byte[keptBytes];
            source.ReadExactly(buffer);
            target.Write(buffer);
        }

        var error = Should.Throw<OnnxImportException>(() => OnnxImporter.Import(path));

        error.Message.ShouldStartWith("ResNet18-truncated.onnx: ");
        error.Message.ShouldContain("truncated");
        error.Message.ShouldNotContain('\n');
    }

    [Fact]
    public void File_that_is_not_onnx_fails_naming_the_file()
    {
        string path = Path.Combine(_directory, "photo.onnx");
        File.Copy(FixtureImages.All[0], path);

        Should.Throw<OnnxImportException>(() => OnnxImporter.Import(path)).Message.ShouldStartWith("photo.onnx: ");
    }

    [Fact]
    public void Missing_file_fails_naming_it()
    {
        Should.Throw<OnnxImportException>(() => OnnxImporter.Import(Path.Combine(_directory, "absent.onnx")))
            .Message.ShouldStartWith("absent.onnx: no such file");
    }

    [Fact]
    public void Initializer_whose_data_does_not_fill_its_shape_is_reported_as_damage()
    {
        string path = new TestGraph()
            .Input("x", 1, 2, 4, 4).Floats("w", [1f, 2f, 3f], 3, 2, 1, 1)
            .Node("Conv", ["x", "w"], ["y"])
            .Output("y")
            .WriteTo(_directory);

        Should.Throw<OnnxImportException>(() => OnnxImporter.Import(path))
            .Message.ShouldBe("model.onnx: initializer 'w' holds 3 values but its shape [3,2,1,1] needs 6; the file looks damaged.");
    }

    [Fact]
    public void Node_reading_a_value_nobody_provides_is_reported()
    {
        string path = new TestGraph()
            .Input("x", 1, 3)
            .NamedNode("add", "Add", ["x", "ghost"], ["y"])
            .Output("y")
            .WriteTo(_directory);

        Should.Throw<OnnxImportException>(() => OnnxImporter.Import(path))
            .Message.ShouldContain("node 'add' reads 'ghost', which no node, initializer or graph input provides");
    }

    [Fact]
    public void Nodes_out_of_order_in_the_file_still_run_in_dependency_order()
    {
        string path = new TestGraph()
            .Input("x", 2, 3)
            .Node("Relu", ["a"], ["y"])
            .Node("Sigmoid", ["x"], ["a"])
            .Output("y")
            .WriteTo(_directory);

        using OnnxGraphModule module = OnnxImporter.Import(path);

        module.ValueNames.ShouldBe(["a", "y"]);
    }

    [Fact]
    public void Initializer_names_become_state_dict_names_without_dots()
    {
        string path = new TestGraph()
            .Input("x", 1, 2, 4, 4).RandomFloats("features.0.weight", 1, 3, 2, 3, 3).RandomFloats("features.0.bias", 2, 3)
            .RandomFloats("features/0/weight", 3, 3, 3, 1, 1)
            .Node("Conv", ["x", "features.0.weight", "features.0.bias"], ["c"])
            .Node("Conv", ["c", "features/0/weight"], ["y"])
            .Output("y")
            .WriteTo(_directory);

        using OnnxGraphModule module = OnnxImporter.Import(path);

        module.StateDictNames["features.0.weight"].ShouldBe("features_0_weight");
        module.StateDictNames["features.0.bias"].ShouldBe("features_0_bias");
        module.StateDictNames["features/0/weight"].ShouldBe("features_0_weight_2");
        module.state_dict().Keys.ShouldBe(["features_0_weight", "features_0_bias", "features_0_weight_2"], ignoreOrder: true);
    }

    [Fact]
    public void Imported_resnet18_is_trainable_gradients_reach_every_conv_weight_and_batch_norm_statistics_stay_frozen()
    {
        using OnnxGraphModule module = OnnxImporter.Import(ResNet18Path);
        (string Name, Parameter Parameter)[] parameters = [.. module.named_parameters()];
        (string Name, Tensor Buffer)[] buffers = [.. module.named_buffers()];
        // 22 conv weights (no biases: batch norm follows each) and 22 batch norms' scale and bias as Parameters;
        // the batch norms' running mean and variance as buffers.
        parameters.Length.ShouldBe(66);
        parameters.Count(p => p.Parameter.dim() == 4).ShouldBe(22);
        buffers.Length.ShouldBe(44);
        string runningMean = module.StateDictNames["Constant98"];
        using Tensor runningMeanBefore = module.get_buffer(runningMean)!.clone();

        module.train();
        using (var scope = NewDisposeScope())
        {
            // Full size: the final 7x7 average pool needs layer4's 7x7 output.
            Tensor input = randn([1, 3, 224, 224], generator: new Generator(seed: 3));
            Tensor loss = module.forward(input).square().mean();
            loss.backward();
        }

        foreach ((string name, Parameter parameter) in parameters)
        {
            Tensor? gradient = parameter.grad;
            gradient.ShouldNotBeNull(name);
            gradient.abs().sum().item<float>().ShouldBeGreaterThan(0f, name);
        }
        // Batch norms of an imported graph stay in inference mode while it trains: the running statistics are unchanged.
        module.get_buffer(runningMean)!.eq(runningMeanBefore).all().item<bool>().ShouldBeTrue();
    }

    [Fact]
    public void Operator_failing_at_run_time_names_the_node_and_its_input_shapes()
    {
        string path = new TestGraph()
            .Input("x", 1, 2, 4, 4)
            .NamedNode("pool", "AveragePool", ["x"], ["y"], Ints("kernel_shape", 7, 7))
            .Output("y")
            .WriteTo(_directory);
        using OnnxGraphModule module = OnnxImporter.Import(path);
        using Tensor small = zeros(1, 2, 4, 4);

        var error = Should.Throw<InvalidOperationException>(() => module.forward(small));

        error.Message.ShouldStartWith("model.onnx: node 'pool' (AveragePool) failed on input shapes [1,2,4,4]: ");
        error.Message.ShouldNotContain('\n');
    }

    [Fact]
    public void Optimizer_step_on_the_imported_weights_changes_the_output()
    {
        string path = new TestGraph()
            .Input("x", 4, 3).RandomFloats("w", 1, 2, 3).RandomFloats("b", 2, 2)
            .Node("Gemm", ["x", "w", "b"], ["y"], Int("transB", 1))
            .Output("y")
            .WriteTo(_directory);
        using OnnxGraphModule module = OnnxImporter.Import(path);
        using Tensor input = randn([4, 3], generator: new Generator(seed: 5));
        using Tensor target = zeros(4, 2);
        var optimizer = optim.SGD(module.parameters(), learningRate: 0.1);

        double before = Loss();
        for (int step = 0; step < 20; step++)
        {
            using var scope = NewDisposeScope();
            optimizer.zero_grad();
            Tensor loss = nn.functional.mse_loss(module.forward(input), target);
            loss.backward();
            optimizer.step();
        }

        Loss().ShouldBeLessThan(before / 2);

        double Loss()
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            return nn.functional.mse_loss(module.forward(input), target).item<float>();
        }
    }

    private static string Rewrite(string path, Action<global::Onnx.ModelProto> change)
    {
        global::Onnx.ModelProto model = global::Onnx.ModelProto.Parser.ParseFrom(File.ReadAllBytes(path));
        change(model);
        File.WriteAllBytes(path, Google.Protobuf.MessageExtensions.ToByteArray(model));
        return path;
    }
}
