using System.Text.Json;
using Cluster.TestSupport.Training;
using Shouldly;

namespace Cluster.Coordinator.Tests.Cli;

/// <summary>
/// `coordinator sweep run` embedded, end to end on real images: a one-trial spec trains to completion and prints
/// DESIGN.md's results format, `predict --checkpoint TRIAL` then uses the trained classes; every bad input is one line
/// naming the spec's line and field, exit code 2, with nothing sent.
/// </summary>
[Collection(nameof(ConsoleCollection))]
public sealed class SweepRunCommandTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("sweep-run-tests-").FullName;

    public void Dispose()
    {
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        Directory.Delete(_root, recursive: true);
    }

    private string Storage => Path.Combine(_root, "storage");

    private string WriteSpec(string body, string name = "spec.yaml")
    {
        string path = Path.Combine(_root, name);
        File.WriteAllText(path, body);
        return path;
    }

    // Adam at 0.001: at 0.003 a from-scratch ResNet-18 on 45 images collapses to one class for half the seeds on an Intel
    // Xeon (family 6, model 207; seed 5 among them) though not on the Zen 3 the test was written on; at 0.001 it learned the
    // stripes for each of seeds 1-9 there.
    private static string Spec(string strategy = "from-scratch", string extra = "", string train = "train", string validation = "0.25") => $"""
        name: stripes
        dataset:
          train: {train}
          validation: {validation}
          test: test
        model: resnet18
        weights: random
        input_size: 32
        strategy: {strategy}
        lr: 0.001
        optimizer: adam
        epochs: 3
        batch_size: 8
        segment_epochs: 2
        seed: 5
        {extra}
        """;

    private Task<(int ExitCode, string Output, string Error)> RunAsync(params string[] args) =>
        InProcessCli.RunAsync([.. args, "--embedded", "--storage", Storage]);

    [Fact]
    public async Task A_one_trial_spec_trains_to_completion_prints_the_results_format_and_its_trial_predicts()
    {
        StripeImages.Write(Path.Combine(_root, "train"), perClass: 30);
        StripeImages.Write(Path.Combine(_root, "test"), perClass: 8, seed: 99);
        string spec = WriteSpec(Spec());

        (int exitCode, string output, string error) = await RunAsync("sweep", "run", spec, "--format", "json");

        exitCode.ShouldBe(0, error);
        using JsonDocument json = JsonDocument.Parse(output);
        JsonElement root = json.RootElement;
        root.GetProperty("name").GetString().ShouldBe("stripes");
        root.GetProperty("status").GetString().ShouldBe("completed");
        JsonElement trial = root.GetProperty("trials").EnumerateArray().Single();
        trial.GetProperty("status").GetString().ShouldBe("completed");
        trial.GetProperty("params").GetProperty("strategy").GetString().ShouldBe("from-scratch");
        trial.GetProperty("params").GetProperty("lr").GetDouble().ShouldBe(0.001);
        trial.GetProperty("epochs").GetInt32().ShouldBe(3);
        trial.GetProperty("test_accuracy").GetDouble().ShouldBeGreaterThanOrEqualTo(0.8, "two classes: chance is 0.5");
        trial.GetProperty("val_accuracy").GetDouble().ShouldBeInRange(0, 1);
        string checkpoint = trial.GetProperty("checkpoint").GetString()!;
        File.Exists(Path.Combine(Storage, checkpoint)).ShouldBeTrue();
        // A finished trial keeps its best checkpoint only.
        Directory.GetFiles(Path.GetDirectoryName(Path.Combine(Storage, checkpoint))!, "*.safetensors").Length.ShouldBe(1);

        string trialId = trial.GetProperty("id").GetString()!;
        string image = Path.Combine(_root, "test", "vertical", "vertical000.png");
        (int predictExit, string predictions, string predictError) = await RunAsync("predict", "--checkpoint", trialId, image, "--format", "json", "--top", "1");
        predictExit.ShouldBe(0, predictError);
        using JsonDocument predicted = JsonDocument.Parse(predictions);
        predicted.RootElement[0].GetProperty("predictions")[0].GetProperty("class").GetString().ShouldBe("vertical");
    }

    [Theory]
    [InlineData("feature-extractor", "head: logistic")]
    [InlineData("feature-extractor", "head: mlp")]
    [InlineData("feature-extractor", "head: knn")]
    [InlineData("feature-extractor", "head: sdca")]
    [InlineData("fine-tune-top", "cutoff: layer3")]
    [InlineData("feature-extractor", "head: logistic\nprecision: bf16")]
    public async Task Strategies_on_the_feature_cache_extract_once_and_learn_the_problem(string strategy, string extra)
    {
        StripeImages.Write(Path.Combine(_root, "train"), perClass: 24);
        StripeImages.Write(Path.Combine(_root, "test"), perClass: 8, seed: 99);
        string spec = WriteSpec(Spec(strategy, extra: extra + "\nhead_epochs: 1"));

        (int exitCode, string output, string error) = await RunAsync("sweep", "run", spec, "--format", "json");

        exitCode.ShouldBe(0, error);
        using JsonDocument json = JsonDocument.Parse(output);
        JsonElement trial = json.RootElement.GetProperty("trials").EnumerateArray().Single();
        trial.GetProperty("status").GetString().ShouldBe("completed", output);
        trial.GetProperty("test_accuracy").GetDouble().ShouldBeGreaterThanOrEqualTo(0.8, $"{strategy} {extra}: chance is 0.5");
        // The frozen prefix ran once per dataset and tap, in the extraction; training read the cache.
        string[] sets = Directory.GetDirectories(Path.Combine(Storage, "features"));
        sets.Length.ShouldBe(strategy == "feature-extractor" ? 2 : 4, string.Join(", ", sets.Select(Path.GetFileName)));
        string dtype = extra.Contains("bf16", StringComparison.Ordinal) ? "bfloat16" : "float32";
        foreach (string set in sets)
        {
            using JsonDocument manifest = JsonDocument.Parse(File.ReadAllText(Path.Combine(set, "manifest.json")));
            manifest.RootElement.GetProperty("dtype").GetString().ShouldBe(dtype);
        }

        // The same spec again: every feature set comes from the cache, nothing is extracted a second time.
        DateTime[] written = [.. sets.SelectMany(s => Directory.GetFiles(s, "shard-*")).Select(File.GetLastWriteTimeUtc)];
        (int again, _, string againError) = await RunAsync("sweep", "run", spec, "--format", "json");
        again.ShouldBe(0, againError);
        sets.SelectMany(s => Directory.GetFiles(s, "shard-*")).Select(File.GetLastWriteTimeUtc).ShouldBe(written);
    }

    [Theory]
    [InlineData("strategy: fine-tune-everything", 9, "strategy 'fine-tune-everything'")]
    [InlineData("head: forest", 16, "head 'forest'")]
    [InlineData("optimizer: rmsprop", 11, "optimizer 'rmsprop'")]
    [InlineData("cutoff: block4_pool", 16, "cutoff 'block4_pool'")]
    [InlineData("lr: 0", 10, "lr 0")]
    [InlineData("lr: -0.1", 10, "lr -0.1")]
    [InlineData("epochs: 0", 12, "epochs 0")]
    [InlineData("batch_size: 0", 13, "batch_size 0")]
    [InlineData("precision: bf16", 16, "precision bf16: only the frozen prefix")]
    public async Task A_bad_value_in_the_spec_is_one_line_with_its_line_field_and_value_and_exit_2(string line, int expectedLine, string expected)
    {
        StripeImages.Write(Path.Combine(_root, "train"), perClass: 2);
        string body = Spec(extra: "");
        string key = line[..line.IndexOf(':', StringComparison.Ordinal)];
        // Replace the field where the spec has it, or add it at the end (line 16).
        string[] lines = body.Split('\n');
        int at = Array.FindIndex(lines, l => l.StartsWith(key + ":", StringComparison.Ordinal));
        if (at >= 0)
        {
            lines[at] = line;
        }
        else
        {
            lines[^1] = line;
        }
        string spec = WriteSpec(string.Join('\n', lines));

        (int exitCode, string output, string error) = await RunAsync("sweep", "run", spec);

        exitCode.ShouldBe(2, output + error);
        string message = error.Trim();
        message.Split('\n').Length.ShouldBe(1, message);
        message.ShouldContain($"line {expectedLine}");
        message.ShouldContain(expected);
        Directory.Exists(Path.Combine(Storage, "checkpoints")).ShouldBeFalse("nothing was sent");
    }

    [Fact]
    public async Task A_dataset_with_one_class_is_refused_before_any_work()
    {
        StripeImages.Write(Path.Combine(_root, "train"), perClass: 4, classes: ["horizontal"]);
        StripeImages.Write(Path.Combine(_root, "test"), perClass: 2);

        (int exitCode, _, string error) = await RunAsync("sweep", "run", WriteSpec(Spec()));

        exitCode.ShouldBe(2, error);
        error.ShouldContain("dataset.train 'train' has 1 class (horizontal)");
        error.ShouldContain("line 2");
    }

    [Fact]
    public async Task An_empty_validation_split_is_refused_before_any_work()
    {
        StripeImages.Write(Path.Combine(_root, "train"), perClass: 1);
        StripeImages.Write(Path.Combine(_root, "test"), perClass: 1);

        (int exitCode, _, string error) = await RunAsync("sweep", "run", WriteSpec(Spec()));

        exitCode.ShouldBe(2, error);
        error.ShouldContain("empty validation split");
    }

    [Fact]
    public async Task A_test_set_with_a_class_train_lacks_is_refused()
    {
        StripeImages.Write(Path.Combine(_root, "train"), perClass: 4);
        StripeImages.Write(Path.Combine(_root, "test"), perClass: 1);
        Directory.CreateDirectory(Path.Combine(_root, "test", "diagonal"));
        File.Copy(Path.Combine(_root, "test", "vertical", "vertical000.png"), Path.Combine(_root, "test", "diagonal", "d.png"));

        (int exitCode, _, string error) = await RunAsync("sweep", "run", WriteSpec(Spec()));

        exitCode.ShouldBe(2, error);
        error.ShouldContain("dataset.test 'test' has class 'diagonal'");
    }

    [Fact]
    public async Task Weights_of_another_architecture_are_refused_with_the_difference()
    {
        StripeImages.Write(Path.Combine(_root, "train"), perClass: 4);
        StripeImages.Write(Path.Combine(_root, "test"), perClass: 1);
        // A checkpoint of a different network: a resnet34 state_dict for a resnet18 spec.
        string weights = Path.Combine(_root, "resnet34.safetensors");
        using (var other = GpuWorker.Models.ModelCatalog.Find("resnet34").Build())
        {
            GpuWorker.Weights.StateDictFile.SaveSafetensors(weights, other, new Dictionary<string, string>());
        }
        string spec = WriteSpec(Spec(strategy: "fine-tune-all").Replace("weights: random", "weights: resnet34.safetensors", StringComparison.Ordinal));

        (int exitCode, _, string error) = await RunAsync("sweep", "run", spec);

        exitCode.ShouldBe(2, error);
        error.ShouldContain("line 7: weights 'resnet34.safetensors' does not fit resnet18");
        error.Trim().Split('\n').Length.ShouldBe(1);
    }
}
