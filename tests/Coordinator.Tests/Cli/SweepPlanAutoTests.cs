using System.Text.Json;
using Cluster.TestSupport.Training;
using Shouldly;

namespace Cluster.Coordinator.Tests.Cli;

/// <summary>
/// `sweep plan` on a spec with `strategy: auto`: the decision and its reason (size, similarity and how it was measured,
/// thresholds, cell, pick) in the table and the JSON; the measured score cached for the next plan; the resolved
/// strategy merged with a configuration the spec names itself.
/// </summary>
[Collection(nameof(ConsoleCollection))]
public sealed class SweepPlanAutoTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("sweep-plan-auto-tests-").FullName;

    public SweepPlanAutoTests()
    {
        StripeImages.Write(Path.Combine(_root, "train"), perClass: 12);
    }

    public void Dispose()
    {
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        Directory.Delete(_root, recursive: true);
    }

    private string Storage => Path.Combine(_root, "storage");

    private string WriteSpec(string lines)
    {
        string path = Path.Combine(_root, "spec.yaml");
        File.WriteAllText(path, $"""
            name: stripes-auto
            dataset:
              train: train
              validation: 0.25
            input_size: 32
            epochs: 1
            batch_size: 8
            {lines}
            """);
        return path;
    }

    private Task<(int ExitCode, string Output, string Error)> RunAsync(params string[] args) =>
        InProcessCli.RunAsync([.. args, "--embedded", "--storage", Storage]);

    [Fact]
    public async Task Auto_measures_the_similarity_says_why_it_chose_and_reads_the_score_back_the_next_time()
    {
        string spec = WriteSpec("model: resnet18-imagenet\nstrategy: auto");

        (int exitCode, string output, string error) = await RunAsync("sweep", "plan", spec, "--format", "json");

        exitCode.ShouldBe(0, error);
        double score;
        using (JsonDocument plan = JsonDocument.Parse(output))
        {
            JsonElement auto = plan.RootElement.GetProperty("auto").EnumerateArray().ShouldHaveSingleItem();
            auto.GetProperty("train_images").GetInt32().ShouldBe(18);
            auto.GetProperty("images_per_class").GetDouble().ShouldBe(9);
            auto.GetProperty("sample_images").GetInt32().ShouldBe(24);
            auto.GetProperty("batch_norms").GetInt32().ShouldBeGreaterThan(15);
            auto.GetProperty("input_size").GetInt32().ShouldBe(224, "measured at the model's native size, not the trials' 32");
            auto.GetProperty("cached").GetBoolean().ShouldBeFalse();
            (auto.GetProperty("similar_above").GetDouble(), auto.GetProperty("big_from").GetInt32()).ShouldBe((0.88, 1200));
            score = auto.GetProperty("similarity").GetDouble();
            score.ShouldBeInRange(0.0, 1.0);
            // Synthetic stripes are no photos.
            score.ShouldBeLessThan(0.88);
            (auto.GetProperty("cell").GetString(), auto.GetProperty("strategy").GetString(), auto.GetProperty("cutoff").GetString())
                .ShouldBe(("small/different", "feature-extractor", "layer2"));
            JsonElement trial = plan.RootElement.GetProperty("trials").EnumerateArray().ShouldHaveSingleItem();
            (trial.GetProperty("params").GetProperty("strategy").GetString(), trial.GetProperty("params").GetProperty("cutoff").GetString())
                .ShouldBe(("feature-extractor", "layer2"));
            plan.RootElement.GetProperty("feature_sets").EnumerateArray().ShouldAllBe(s => s.GetProperty("layer").GetString() == "layer2");
        }

        (exitCode, output, error) = await RunAsync("sweep", "plan", spec);

        exitCode.ShouldBe(0, error);
        string line = output.ReplaceLineEndings(" ");
        line.ShouldContain("auto: 18 training images in 2 classes = 9 per class (below 1,200: small)");
        line.ShouldContain($"similarity {score:F3} (batch-norm statistics of resnet18-imagenet on 24 sampled images at 224px");
        line.ShouldContain(", cached; not above 0.88: different) -> small/different -> feature-extractor at layer2");
    }

    [Fact]
    public async Task A_given_similarity_is_not_measured_and_a_pick_the_spec_also_names_is_one_trial()
    {
        string spec = WriteSpec("model: resnet18\nweights: random\nstrategy: [auto, feature-extractor]\ncutoff: avgpool\nauto: {similarity: 0.95}");

        (int exitCode, string output, string error) = await RunAsync("sweep", "plan", spec, "--format", "json");

        exitCode.ShouldBe(0, error);
        using JsonDocument plan = JsonDocument.Parse(output);
        JsonElement auto = plan.RootElement.GetProperty("auto").EnumerateArray().ShouldHaveSingleItem();
        (auto.GetProperty("cell").GetString(), auto.GetProperty("measure").GetString()).ShouldBe(("small/similar", "given by auto.similarity"));
        auto.GetProperty("sample_images").ValueKind.ShouldBe(JsonValueKind.Null);
        plan.RootElement.GetProperty("trial_count").GetInt32().ShouldBe(1);
        plan.RootElement.GetProperty("skipped").EnumerateArray().ShouldHaveSingleItem().GetProperty("reason").GetString()
            .ShouldBe("the same trial as configuration 0: strategy auto chose feature-extractor at avgpool");
        Directory.Exists(Path.Combine(Storage, "similarity")).ShouldBeFalse("nothing was measured");
    }
}
