using System.Text.Json;
using Cluster.IntegrationTests.Support;
using Shouldly;

namespace Cluster.IntegrationTests;

/// <summary>`coordinator models ...` as a user runs it: a process, no servers.</summary>
public sealed class ModelsCliTests : IDisposable
{
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(3);
    private readonly string _folder = Directory.CreateTempSubdirectory("models-cli-").FullName;
    private readonly Dictionary<string, string> _environment = new() { ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1" };

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private async Task<(int Code, ClusterProcess Process)> Run(params string[] args)
    {
        ClusterProcess process = ClusterProcess.Start(RepoPaths.CoordinatorDll, _environment, _folder, args);
        int code = await process.WaitForExitAsync(s_deadline);
        await process.DisposeAsync();
        return (code, process);
    }

    [Fact]
    public async Task Models_layers_lists_every_tap_with_its_shape_and_what_a_cutoff_freezes()
    {
        (int code, ClusterProcess p) = await Run("models", "layers", "vgg19", "--format", "json");

        code.ShouldBe(0, p.Describe());
        using JsonDocument json = JsonDocument.Parse(p.StandardOutput);
        json.RootElement.GetProperty("inputSize").GetInt32().ShouldBe(224);
        JsonElement pool4 = json.RootElement.GetProperty("taps").EnumerateArray()
            .Single(t => t.GetProperty("aliases").EnumerateArray().Any(a => a.GetString() == "block4_pool"));
        pool4.GetProperty("outputShape").EnumerateArray().Select(d => d.GetInt64()).ShouldBe([512L, 14, 14]);
        // Blocks 1-4 of VGG19: 2+2+4+4 convolutions, 3x3 kernels, with biases.
        long frozen = (3 * 64 + 64 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 3 * 256 * 256 + 256 * 512 + 3 * 512 * 512) * 9L
            + 2 * 64 + 2 * 128 + 4 * 256 + 4 * 512;
        pool4.GetProperty("frozenAtCutoff").GetInt64().ShouldBe(frozen);
    }

    [Fact]
    public async Task Models_list_names_every_architecture_with_its_input_size()
    {
        (int code, ClusterProcess p) = await Run("models", "list", "--format", "json");

        code.ShouldBe(0, p.Describe());
        using JsonDocument json = JsonDocument.Parse(p.StandardOutput);
        var sizes = json.RootElement.EnumerateArray().ToDictionary(a => a.GetProperty("name").GetString()!, a => a.GetProperty("inputSize").GetInt32());
        sizes["inception_v3"].ShouldBe(299);
        sizes["resnet152"].ShouldBe(224);
        string[] required = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn",
            "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "alexnet", "inception_v3", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"];
        required.ShouldBeSubsetOf(sizes.Keys);
    }

    [Fact]
    public async Task Predict_prints_the_top_classes_of_each_image_with_the_checkpoints_class_names()
    {
        string checkpoint = Path.Combine(_folder, "head.safetensors");
        using (var model = Cluster.GpuWorker.Models.ModelCatalog.Find("mobilenet_v3_small").Build(new Cluster.GpuWorker.Models.BackboneOptions(NumClasses: 2)))
        {
            Cluster.GpuWorker.Prediction.Predictor.SaveCheckpoint(checkpoint, "mobilenet_v3_small", model, ["sandal", "sneaker"]);
        }
        string images = Path.Combine(_folder, "images");
        TestImages.Write(Path.Combine(images, "a.jpg"), seed: 1);
        TestImages.Write(Path.Combine(images, "b.png"), seed: 2, format: SkiaSharp.SKEncodedImageFormat.Png);
        File.WriteAllText(Path.Combine(images, "c.jpg"), "not an image");

        (int code, ClusterProcess p) = await Run("predict", "--checkpoint", checkpoint, images, "--top", "2", "--format", "json");

        code.ShouldBe(0, p.Describe());
        using JsonDocument json = JsonDocument.Parse(p.StandardOutput);
        var results = json.RootElement.EnumerateArray().ToList();
        results.Select(r => Path.GetFileName(r.GetProperty("image").GetString())).ShouldBe(["a.jpg", "b.png", "c.jpg"]);
        foreach (JsonElement r in results.Take(2))
        {
            r.GetProperty("predictions").EnumerateArray().Select(c => c.GetProperty("class").GetString()).ShouldBe(["sandal", "sneaker"], ignoreOrder: true);
        }
        results[2].GetProperty("skipped").GetString().ShouldStartWith("not-an-image");
    }

    [Fact]
    public async Task Predict_on_a_missing_image_is_one_line_and_exit_code_2()
    {
        (int code, ClusterProcess p) = await Run("predict", "--model", "resnet18", "no/such/image.jpg");

        code.ShouldBe(2, p.Describe());
        p.StandardError.Trim().ShouldBe("coordinator: error: image 'no/such/image.jpg' does not exist.");
    }

    [Theory]
    [InlineData("models", "layers", "resnet51", "unknown architecture 'resnet51' for this cluster; valid (closest first): resnet50")]
    public async Task Unknown_names_give_one_line_with_the_closest_valid_names_first(string command, string sub, string arg, string expected)
    {
        (int code, ClusterProcess p) = await Run(command, sub, arg);

        code.ShouldBe(2, p.Describe());
        p.StandardError.Trim().ShouldStartWith("coordinator: error: " + expected);
        p.StandardError.Trim().Split('\n').Length.ShouldBe(1);
    }
}
