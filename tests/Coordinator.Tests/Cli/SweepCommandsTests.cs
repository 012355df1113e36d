using System.Text.Json;
using Cluster.TestSupport.Training;
using Shouldly;

namespace Cluster.Coordinator.Tests.Cli;

/// <summary>
/// A multi-trial sweep embedded, end to end on real images: `sweep run` trains a grid through the scheduler, extracting
/// each shared feature set once; `--no-share` gives every trial its own prefix and the same results; `sweep results`,
/// `list` and `status` read what the service recorded.
/// </summary>
[Collection(nameof(ConsoleCollection))]
public sealed class SweepCommandsTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("sweep-commands-tests-").FullName;

    public SweepCommandsTests()
    {
        StripeImages.Write(Path.Combine(_root, "train"), perClass: 24);
        StripeImages.Write(Path.Combine(_root, "test"), perClass: 8, seed: 99);
    }

    public void Dispose()
    {
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        Directory.Delete(_root, recursive: true);
    }

    private string Storage => Path.Combine(_root, "storage");

    /// <summary>Two heads at two cutoffs, the mlp at two rates: the logistic head uses no rate, so 6 trials of 8 configurations.</summary>
    private string WriteGrid()
    {
        string path = Path.Combine(_root, "grid.yaml");
        File.WriteAllText(path, """
            name: stripes-grid
            dataset:
              train: train
              validation: 0.25
              test: test
            model: resnet18
            weights: random
            input_size: 32
            strategy: feature-extractor
            cutoff: [layer2, layer3]
            head: [logistic, mlp]
            lr: [0.01, 0.001]
            epochs: 3
            batch_size: 8
            seed: 5
            parallelism: 2
            """);
        return path;
    }

    private Task<(int ExitCode, string Output, string Error)> RunAsync(params string[] args) =>
        InProcessCli.RunAsync([.. args, "--embedded", "--storage", Storage]);

    private static (string Id, string Status, string Head, string Cutoff, double? Lr, double Val, double Test)[] Trials(JsonElement results) =>
        [.. results.GetProperty("trials").EnumerateArray().Select(t =>
        {
            JsonElement p = t.GetProperty("params");
            return (t.GetProperty("id").GetString()!, t.GetProperty("status").GetString()!, p.GetProperty("head").GetString()!, p.GetProperty("cutoff").GetString()!,
                p.TryGetProperty("lr", out JsonElement lr) ? lr.GetDouble() : (double?)null,
                t.GetProperty("val_accuracy").GetDouble(), t.GetProperty("test_accuracy").GetDouble());
        })];

    [Fact]
    public async Task A_grid_runs_every_trial_on_features_extracted_once_and_no_share_gets_the_same_results_from_its_own()
    {
        string grid = WriteGrid();

        (int exitCode, string output, string error) = await RunAsync("sweep", "run", grid, "--format", "json");

        exitCode.ShouldBe(0, error);
        error.ShouldContain("2 of 8 configurations left out");
        using JsonDocument shared = JsonDocument.Parse(output);
        var trials = Trials(shared.RootElement);
        shared.RootElement.GetProperty("status").GetString().ShouldBe("completed");
        trials.Length.ShouldBe(6);
        trials.ShouldAllBe(t => t.Status == "completed");
        trials.Count(t => t.Head == "logistic").ShouldBe(2);
        trials.Where(t => t.Head == "logistic").ShouldAllBe(t => t.Lr == null);
        // Ranked: the best validation accuracy first.
        trials.Select(t => t.Val).ShouldBeInOrder(SortDirection.Descending);
        trials.Max(t => t.Test).ShouldBeGreaterThanOrEqualTo(0.8, "two classes: chance is 0.5");
        // One set per (cutoff, dataset): 2 cutoffs × train and test, shared by the three trials at each cutoff.
        Directory.GetDirectories(Path.Combine(Storage, "features")).Length.ShouldBe(4);

        (exitCode, output, error) = await RunAsync("sweep", "run", grid, "--no-share", "--format", "json");

        exitCode.ShouldBe(0, error);
        using JsonDocument alone = JsonDocument.Parse(output);
        var unshared = Trials(alone.RootElement);
        // Every trial extracted its own (train and test): 6 × 2 more sets, and the same accuracies, trial for trial.
        Directory.GetDirectories(Path.Combine(Storage, "features")).Length.ShouldBe(4 + 6 * 2);
        unshared.Select(t => (t.Head, t.Cutoff, t.Lr, t.Val, t.Test)).OrderBy(t => t.ToString())
            .ShouldBe(trials.Select(t => (t.Head, t.Cutoff, t.Lr, t.Val, t.Test)).OrderBy(t => t.ToString()));

        // The leaderboard's other views of the first sweep.
        string sweepId = shared.RootElement.GetProperty("sweep").GetString()!;
        (exitCode, output, error) = await RunAsync("sweep", "results", sweepId[..8], "--top", "2", "--format", "csv");
        exitCode.ShouldBe(0, error);
        string[] rows = output.TrimEnd().Split('\n');
        rows.Length.ShouldBe(3, output);
        string[] header = rows[0].Split(',');
        header[..3].ShouldBe(["rank", "id", "status"]);
        header.ShouldContain("head");
        header.ShouldContain("val_accuracy");
        rows[1].Split(',')[1].ShouldBe(trials[0].Id);
        rows[1].Split(',')[header.ToList().IndexOf("val_accuracy")].ShouldBe(trials[0].Val.ToString("R", System.Globalization.CultureInfo.InvariantCulture));

        (exitCode, output, error) = await RunAsync("sweep", "list", "--format", "json");
        exitCode.ShouldBe(0, error);
        using JsonDocument list = JsonDocument.Parse(output);
        JsonElement[] sweeps = [.. list.RootElement.EnumerateArray()];
        sweeps.Length.ShouldBe(2);
        sweeps.ShouldAllBe(s => s.GetProperty("status").GetString() == "completed" && s.GetProperty("trials").GetInt32() == 6 && s.GetProperty("ended").GetInt32() == 6);

        (exitCode, output, error) = await RunAsync("sweep", "status", sweepId, "--format", "json");
        exitCode.ShouldBe(0, error);
        using JsonDocument status = JsonDocument.Parse(output);
        status.RootElement.GetProperty("trials").GetProperty("completed").GetInt32().ShouldBe(6);
        status.RootElement.GetProperty("search").GetProperty("method").GetString().ShouldBe("grid");
    }

    [Fact]
    public async Task An_unknown_sweep_id_and_csv_where_a_command_has_none_are_one_line_and_exit_2()
    {
        (int exitCode, _, string error) = await RunAsync("sweep", "results", "0123abcd");
        exitCode.ShouldBe(2);
        error.Trim().ShouldBe("coordinator: error: no sweep has id '0123abcd' (see `coordinator sweep list`).");

        (exitCode, _, error) = await RunAsync("sweep", "list", "--format", "csv");
        exitCode.ShouldBe(2);
        error.ShouldContain("--format csv is for `sweep results` only");
        error.Trim().Split('\n').Length.ShouldBe(1, error);
    }

    [Fact]
    public async Task A_mistyped_option_is_one_line_and_exit_2_not_silently_ignored()
    {
        (int exitCode, string output, string error) = await RunAsync("sweep", "list", "--formt", "json");
        exitCode.ShouldBe(2);
        error.Trim().ShouldBe("coordinator: error: Unknown option 'formt'.");
        output.ShouldBeEmpty();
    }
}
