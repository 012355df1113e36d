using System.Text.Json;
using Cluster.IntegrationTests.Support;
using Cluster.Storage.Database;
using Microsoft.EntityFrameworkCore;
using Npgsql;
using Shouldly;

namespace Cluster.IntegrationTests;

public sealed class EmbeddedAndSchemaTests : IAsyncLifetime
{
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(3);
    private IsolatedCluster _cluster = null!;

    public async Task InitializeAsync() => _cluster = await IsolatedCluster.CreateAsync();

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    [Fact]
    public async Task Embedded_selftest_needs_no_servers_and_records_its_result_in_sqlite()
    {
        // No broker or database settings at all: the default is embedded.
        string storage = Path.Combine(_cluster.StorageRoot, "embedded");
        var environment = new Dictionary<string, string> { ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1" };
        await using ClusterProcess selftest = ClusterProcess.Start(RepoPaths.CoordinatorDll, environment, _cluster.StorageRoot,
            "selftest", "--storage", storage, "--format", "json");

        (await selftest.WaitForExitAsync(s_deadline)).ShouldBe(0, selftest.Describe());

        using JsonDocument result = JsonDocument.Parse(selftest.StandardOutput);
        result.RootElement.GetProperty("mode").GetString().ShouldBe("embedded");
        result.RootElement.GetProperty("passed").GetBoolean().ShouldBeTrue();
        var sqlite = new ClusterDbContextFactory(DatabaseProvider.Sqlite, $"Data Source={Path.Combine(storage, "cluster.db")};Pooling=False");
        await using ClusterDbContext db = sqlite.CreateDbContext();
        var row = await db.SelfTestRuns.AsNoTracking().SingleAsync();
        row.JobId.ShouldBe(result.RootElement.GetProperty("jobId").GetGuid());
        row.WorkerId.ShouldStartWith("embedded-");
    }

    [Fact]
    public async Task The_demo_runs_from_a_fresh_folder_with_no_servers_and_shares_its_feature_sets()
    {
        // A new, empty working folder and no settings: the demo brings its own spec and images and stores under ./.cluster.
        string folder = Directory.CreateDirectory(Path.Combine(_cluster.StorageRoot, "fresh")).FullName;
        var environment = new Dictionary<string, string> { ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1" };
        await using ClusterProcess demo = ClusterProcess.Start(RepoPaths.CoordinatorDll, environment, folder, "demo", "--format", "json");

        (await demo.WaitForExitAsync(TimeSpan.FromMinutes(10))).ShouldBe(0, demo.Describe());

        using JsonDocument results = JsonDocument.Parse(demo.StandardOutput);
        results.RootElement.GetProperty("status").GetString().ShouldBe("completed");
        JsonElement[] trials = [.. results.RootElement.GetProperty("trials").EnumerateArray()];
        trials.Length.ShouldBe(12);
        trials.Select(t => t.GetProperty("params").GetProperty("strategy").GetString()).Distinct().Order()
            .ShouldBe(["feature-extractor", "fine-tune-all", "fine-tune-top"]);
        trials.ShouldAllBe(t => t.GetProperty("status").GetString() == "completed");
        // Ten classes (chance is 0.1) from 320 training images: the leaderboard's best is far above chance.
        trials[0].GetProperty("val_accuracy").GetDouble().ShouldBeGreaterThan(0.6);
        trials.Select(t => t.GetProperty("val_accuracy").GetDouble()).ShouldBeInOrder(SortDirection.Descending);
        string features = Path.Combine(folder, ".cluster", "features");
        string[] sets = Directory.GetDirectories(features);
        sets.Length.ShouldBe(10, "train and test at layer3 and layer4, pooled and not, and the global pool: each once for 10 trials that read them");
    }

    [Fact]
    public async Task Db_migrate_creates_the_schema_in_postgres_and_a_second_run_changes_nothing()
    {
        (int first, ClusterProcess migrate) = await _cluster.RunCoordinatorAsync(s_deadline, "db", "migrate", "--format", "json");
        first.ShouldBe(0, migrate.Describe());
        using (JsonDocument applied = JsonDocument.Parse(migrate.StandardOutput))
        {
            applied.RootElement.GetProperty("applied").GetArrayLength().ShouldBeGreaterThan(0);
        }

        await using (var connection = new NpgsqlConnection(_cluster.DatabaseConnectionString))
        {
            await connection.OpenAsync();
            await using var tables = new NpgsqlCommand(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1", connection);
            var names = new List<string>();
            await using (var reader = await tables.ExecuteReaderAsync())
            {
                while (await reader.ReadAsync())
                {
                    names.Add(reader.GetString(0));
                }
            }
            foreach (string table in new[] { "datasets", "feature_sets", "feature_shards", "skipped_images", "sweeps", "trials", "segments", "epoch_metrics", "workers", "selftest_runs" })
            {
                names.ShouldContain(table);
            }
            await using var jsonb = new NpgsqlCommand(
                "SELECT data_type FROM information_schema.columns WHERE table_name = 'trials' AND column_name = 'hyperparameters'", connection);
            (await jsonb.ExecuteScalarAsync()).ShouldBe("jsonb");
        }

        (int second, ClusterProcess again) = await _cluster.RunCoordinatorAsync(s_deadline, "db", "migrate", "--format", "json");
        second.ShouldBe(0, again.Describe());
        using JsonDocument none = JsonDocument.Parse(again.StandardOutput);
        none.RootElement.GetProperty("applied").GetArrayLength().ShouldBe(0);
    }

    [Fact]
    public async Task Config_show_masks_secrets_and_reports_the_cluster_settings()
    {
        _cluster.Environment["Database__ConnectionString"] = _cluster.DatabaseConnectionString + ";Password=s3cret";

        (int code, ClusterProcess show) = await _cluster.RunCoordinatorAsync(s_deadline, "config", "show", "--format", "json");

        code.ShouldBe(0, show.Describe());
        show.StandardOutput.ShouldNotContain("s3cret");
        using JsonDocument config = JsonDocument.Parse(show.StandardOutput);
        config.RootElement.GetProperty("mode").GetString().ShouldBe("cluster");
        config.RootElement.GetProperty("rabbitMq").GetProperty("virtualHost").GetString().ShouldBe(_cluster.Name);
        config.RootElement.GetProperty("database").GetProperty("provider").GetString().ShouldBe("postgres");
    }
}
