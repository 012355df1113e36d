using System.Text.Json;
using Cluster.TestSupport.Training;
using Shouldly;

namespace Cluster.Coordinator.Tests.Cli;

/// <summary>
/// `coordinator sweep plan`: the trials of a spec, the feature sets they share with what the cache holds, and the cost
/// against no sharing, with nothing run; its keys are the ones a run uses (a run of one of its trials turns its sets
/// to cached).
/// </summary>
[Collection(nameof(ConsoleCollection))]
public sealed class SweepPlanCommandTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("sweep-plan-tests-").FullName;

    public SweepPlanCommandTests()
    {
        StripeImages.Write(Path.Combine(_root, "train"), perClass: 12);
        StripeImages.Write(Path.Combine(_root, "test"), perClass: 4, seed: 99);
    }

    public void Dispose()
    {
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        Directory.Delete(_root, recursive: true);
    }

    private string Storage => Path.Combine(_root, "storage");

    private string WriteSpec(string head, string lr, string extra = "", string name = "spec.yaml")
    {
        string path = Path.Combine(_root, name);
        File.WriteAllText(path, $"""
            name: stripes-grid
            dataset:
              train: train
              validation: 0.25
              test: test
            model: resnet18
            weights: random
            input_size: 32
            strategy: feature-extractor
            cutoff: layer3
            head: {head}
            lr: {lr}
            epochs: 3
            batch_size: 8
            seed: 5
            {extra}
            """);
        return path;
    }

    private Task<(int ExitCode, string Output, string Error)> RunAsync(params string[] args) =>
        InProcessCli.RunAsync([.. args, "--embedded", "--storage", Storage]);

    [Fact]
    public async Task A_grid_shares_its_feature_sets_and_a_run_of_one_trial_turns_them_cached()
    {
        string grid = WriteSpec("[logistic, mlp]", "[0.01, 0.001]");

        (int exitCode, string output, string error) = await RunAsync("sweep", "plan", grid, "--format", "json");

        exitCode.ShouldBe(0, error);
        using (JsonDocument plan = JsonDocument.Parse(output))
        {
            JsonElement root = plan.RootElement;
            root.GetProperty("method").GetString().ShouldBe("grid");
            // The logistic head uses no learning rate: its two configurations are one trial, the second left out.
            root.GetProperty("trial_count").GetInt32().ShouldBe(3);
            JsonElement[] trials = [.. root.GetProperty("trials").EnumerateArray()];
            trials.Select(t => (t.GetProperty("params").GetProperty("head").GetString(), t.GetProperty("params").TryGetProperty("lr", out JsonElement lr) ? lr.GetDouble() : (double?)null))
                .ShouldBe([("logistic", null), ("mlp", 0.01), ("mlp", 0.001)]);
            JsonElement skipped = root.GetProperty("skipped").EnumerateArray().ShouldHaveSingleItem();
            skipped.GetProperty("number").GetInt32().ShouldBe(1);
            skipped.GetProperty("reason").GetString().ShouldBe("the same trial as configuration 0: feature-extractor does not use lr");
            // Train (its validation quarter comes from the same set) and test: two sets, each shared by all three trials.
            JsonElement[] sets = [.. root.GetProperty("feature_sets").EnumerateArray()];
            sets.Length.ShouldBe(2);
            sets.ShouldAllBe(s => s.GetProperty("trials").GetInt32() == 3 && s.GetProperty("status").GetString() == "to extract");
            sets.Select(s => s.GetProperty("images").GetInt32()).Order().ShouldBe([8, 24]);
            JsonElement cost = root.GetProperty("cost");
            cost.GetProperty("images_to_extract").GetInt64().ShouldBe(32);
            cost.GetProperty("images_to_extract_without_sharing").GetInt64().ShouldBe(3 * 32);
            cost.GetProperty("training_image_epochs_on_features").GetInt64().ShouldBe(3 * 18 * 3);
        }
        Directory.Exists(Path.Combine(Storage, "features")).ShouldBeFalse("a plan runs nothing");

        // One of the grid's trials, run: the features it extracts are the ones the plan named.
        (exitCode, _, error) = await RunAsync("sweep", "run", WriteSpec("logistic", "0.01", name: "one.yaml"), "--format", "json");
        exitCode.ShouldBe(0, error);
        (exitCode, output, error) = await RunAsync("sweep", "plan", grid, "--format", "json");

        exitCode.ShouldBe(0, error);
        using JsonDocument after = JsonDocument.Parse(output);
        after.RootElement.GetProperty("feature_sets").EnumerateArray().ShouldAllBe(s => s.GetProperty("status").GetString() == "cached");
        after.RootElement.GetProperty("cost").GetProperty("images_to_extract").GetInt64().ShouldBe(0);
        after.RootElement.GetProperty("cost").GetProperty("images_cached").GetInt64().ShouldBe(32);
    }

    [Fact]
    public async Task A_sweep_over_three_cutoffs_plans_one_pass_per_dataset_and_runs_it_once()
    {
        string spec = WriteSpec("logistic", "0.01");
        File.WriteAllText(spec, File.ReadAllText(spec).Replace("cutoff: layer3", "cutoff: [layer2, layer3, layer4]", StringComparison.Ordinal));

        (int exitCode, string output, string error) = await RunAsync("sweep", "plan", spec, "--format", "json");

        exitCode.ShouldBe(0, error);
        using (JsonDocument plan = JsonDocument.Parse(output))
        {
            plan.RootElement.GetProperty("feature_sets").GetArrayLength().ShouldBe(6, "three cutoffs of train and of test");
            JsonElement cost = plan.RootElement.GetProperty("cost");
            cost.GetProperty("sets_to_extract").GetInt32().ShouldBe(6);
            cost.GetProperty("extraction_passes").GetInt32().ShouldBe(2, "one pass over the train images, one over the test images");
        }

        (exitCode, _, error) = await RunAsync("sweep", "run", spec, "--format", "json");

        exitCode.ShouldBe(0, error);
        var databases = new Cluster.Storage.Database.ClusterDbContextFactory(Cluster.Storage.Database.DatabaseProvider.Sqlite,
            $"Data Source={Path.Combine(Storage, "cluster.db")};Pooling=False");
        await using var db = databases.CreateDbContext();
        var sets = db.FeatureSets.ToList();
        sets.Count.ShouldBe(6);
        sets.ShouldAllBe(s => s.Status == Cluster.Storage.Database.Entities.FeatureSetStatus.Complete);
        sets.Select(s => s.Shape).Distinct().Count().ShouldBe(3, "each cutoff its own features");
        // Each dataset's three sets were written by one job: their shard rows carry that one pass's time.
        var shards = db.FeatureShards.ToList().Join(sets, sh => sh.FeatureSetKey, s => s.Key, (sh, s) => (s.DatasetId, sh.Seconds)).ToList();
        shards.Count.ShouldBe(6);
        shards.GroupBy(x => x.DatasetId).ShouldAllBe(g => g.Count() == 3 && g.Select(x => x.Seconds).Distinct().Count() == 1);
    }

    [Fact]
    public async Task An_asha_plan_shows_its_rungs_and_both_bounds_of_its_cost()
    {
        string spec = WriteSpec("mlp", "{log_uniform: [1.0e-4, 1.0e-2]}", "search: {method: asha, trials: 9, min_epochs: 1, reduction: 3}");
        // ASHA's top rung is the spec's epochs.
        File.WriteAllText(spec, File.ReadAllText(spec).Replace("epochs: 3", "epochs: 9", StringComparison.Ordinal));

        (int exitCode, string output, string error) = await RunAsync("sweep", "plan", spec, "--format", "json");

        exitCode.ShouldBe(0, error);
        using JsonDocument plan = JsonDocument.Parse(output);
        plan.RootElement.GetProperty("rungs").EnumerateArray().Select(r => r.GetInt32()).ShouldBe([1, 3, 9]);
        plan.RootElement.GetProperty("trial_count").GetInt32().ShouldBe(9);
        plan.RootElement.GetProperty("cost").GetProperty("training_image_epochs_on_features").GetInt64().ShouldBe(9 * 18 * 9);
        plan.RootElement.GetProperty("cost").GetProperty("training_image_epochs_at_least").GetInt64().ShouldBe(9 * 18 * 1);
    }

    [Fact]
    public async Task Under_a_storage_budget_the_plan_stores_what_pays_recomputes_the_rest_and_a_later_sweep_evicts_what_no_sweep_needs()
    {
        // fine-tune-top at two cutoffs x two rates, 3 epochs (1 head epoch). At input 32 a row of layer2 is 128x4x4 floats
        // (8 KiB), of layer3 256x2x2 (4 KiB), of the head's pooled features 512 (2 KiB); train has 24 images, test 8.
        // 200 KiB holds the head sets (64 KiB) and layer3's (128 KiB), best saving per byte first; layer2's (256 KiB) not.
        string spec = WriteSpec("logistic", "[0.01, 0.001]", "budget: {storage: 200KiB}\nhead_epochs: 1");
        File.WriteAllText(spec, File.ReadAllText(spec)
            .Replace("strategy: feature-extractor", "strategy: fine-tune-top", StringComparison.Ordinal)
            .Replace("cutoff: layer3", "cutoff: [layer2, layer3]", StringComparison.Ordinal));

        (int exitCode, string output, string error) = await RunAsync("sweep", "plan", spec, "--format", "json");

        exitCode.ShouldBe(0, error);
        using (JsonDocument plan = JsonDocument.Parse(output))
        {
            JsonElement storage = plan.RootElement.GetProperty("storage");
            storage.GetProperty("budget_bytes").GetInt64().ShouldBe(200 * 1024);
            var decisions = storage.GetProperty("decisions").EnumerateArray()
                .Select(d => (Layer: d.GetProperty("layer").GetString(), Pool: d.GetProperty("pooling").GetString(), Action: d.GetProperty("action").GetString(),
                    Bytes: d.GetProperty("bytes").GetInt64(), Recompute: d.GetProperty("recompute_images").GetInt64()))
                .ToList();
            decisions.Count.ShouldBe(6, "two cutoffs and the head's pooled tap, of train and of test");
            // Layers are the taps' canonical step names: layer2.1 is layer2's last block.
            decisions.Where(d => d.Layer == "layer2.1").Select(d => d.Action).Distinct().ShouldBe(["recompute"], string.Join("; ", decisions));
            decisions.Where(d => d.Layer != "layer2.1").Select(d => d.Action).Distinct().ShouldBe(["store"], string.Join("; ", decisions));
            decisions.Where(d => d.Layer == "layer2.1").Sum(d => d.Bytes).ShouldBe((24 + 8) * 8 * 1024);
            // layer2 train: two trials x two epochs after the head epoch x 24 images.
            decisions.Single(d => d.Layer == "layer2.1" && d.Recompute > 16).Recompute.ShouldBe(2 * 2 * 24);
            storage.GetProperty("new_bytes").GetInt64().ShouldBe((24 + 8) * (2 + 4) * 1024);
            JsonElement[] trials = [.. plan.RootElement.GetProperty("trials").EnumerateArray()];
            trials.Count(t => t.GetProperty("recomputes_prefix").GetBoolean()).ShouldBe(2);
            plan.RootElement.GetProperty("cost").GetProperty("images_through_recomputed_prefixes").GetInt64().ShouldBe(2 * 2 * 24 + 2 * 8);
        }

        (exitCode, output, error) = await RunAsync("sweep", "run", spec, "--format", "json");

        exitCode.ShouldBe(0, error);
        using (JsonDocument results = JsonDocument.Parse(output))
        {
            results.RootElement.GetProperty("trials").EnumerateArray().ShouldAllBe(t => t.GetProperty("status").GetString() == "completed");
        }
        var databases = new Cluster.Storage.Database.ClusterDbContextFactory(Cluster.Storage.Database.DatabaseProvider.Sqlite,
            $"Data Source={Path.Combine(Storage, "cluster.db")};Pooling=False");
        List<Cluster.Storage.Database.Entities.FeatureSetRecord> first;
        await using (var db = databases.CreateDbContext())
        {
            first = [.. db.FeatureSets];
            first.Select(s => s.Layer).Distinct().Order().ToArray().ShouldBe(["avgpool", "layer3.1"], "layer2 was recomputed in its trials, never stored");
            first.ShouldAllBe(s => s.LastUsedAt != null);
            // Sets asked for within the hour are kept (their sweep may not have been submitted yet): age these two days.
            foreach (var set in db.FeatureSets)
            {
                set.LastUsedAt = DateTime.UtcNow.AddDays(-2);
            }
            await db.SaveChangesAsync();
        }

        // A second sweep: a head on layer4's pooled features (2 KiB a row: 64 KiB), under 100 KiB. The first sweep is
        // over, so its 192 KiB are evictable; least recently used first until 64 KiB more fit.
        string second = WriteSpec("logistic", "0.01", "budget: {storage: 100KiB}", name: "second.yaml");
        File.WriteAllText(second, File.ReadAllText(second).Replace("cutoff: layer3", "cutoff: layer4", StringComparison.Ordinal));
        (exitCode, output, error) = await RunAsync("sweep", "plan", second, "--format", "json");
        exitCode.ShouldBe(0, error);
        string[] planned;
        using (JsonDocument plan = JsonDocument.Parse(output))
        {
            planned = [.. plan.RootElement.GetProperty("storage").GetProperty("evictions").EnumerateArray().Select(e => e.GetProperty("key").GetString()!)];
        }
        planned.ShouldNotBeEmpty();

        (exitCode, output, error) = await RunAsync("sweep", "run", second, "--format", "json");

        exitCode.ShouldBe(0, error);
        await using (var db = databases.CreateDbContext())
        {
            var now = db.FeatureSets.ToList();
            now.Count(s => planned.Contains(s.Key)).ShouldBe(0, "the sets the plan named were evicted");
            now.Count(s => s.Layer == "layer4.1").ShouldBe(2);
            now.Sum(s => (long)s.ImageCount * s.Shape.Split('x').Aggregate(1L, (a, d) => a * long.Parse(d, System.Globalization.CultureInfo.InvariantCulture)) * 4).ShouldBeLessThanOrEqualTo(100 * 1024);
            db.FeatureShards.Count(sh => planned.Contains(sh.FeatureSetKey)).ShouldBe(0);
        }
        foreach (string key in planned)
        {
            Directory.Exists(Path.Combine(Storage, "features", key)).ShouldBeFalse($"{key}'s files are deleted with its rows");
        }
        foreach (var kept in first.Where(s => !planned.Contains(s.Key)))
        {
            File.Exists(Path.Combine(Storage, "features", kept.Key, "manifest.json")).ShouldBeTrue();
        }
    }

    [Fact]
    public async Task A_grid_over_a_bad_value_fails_with_its_line_before_anything()
    {
        string spec = WriteSpec("[logistic, boosted]", "0.01");

        (int exitCode, string output, string error) = await RunAsync("sweep", "plan", spec);

        exitCode.ShouldBe(2, output);
        error.ShouldContain("line 11: head 'boosted'");
        error.Trim().Split('\n').Length.ShouldBe(1);
    }
}
