using System.Text.Json;
using Cluster.Coordinator.Cli;
using Cluster.Coordinator.Tests.Datasets;
using Shouldly;

namespace Cluster.Coordinator.Tests.Cli;

[CollectionDefinition(nameof(ConsoleCollection), DisableParallelization = true)]
public sealed class ConsoleCollection
{
}

/// <summary>The `dataset` commands run in this process, their stdout and stderr captured (hence no parallel tests).</summary>
[Collection(nameof(ConsoleCollection))]
public sealed class DatasetCommandsTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("dataset-commands-tests-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Fact]
    public async Task Import_idx_then_scan_write_a_manifest_and_print_its_id_as_json()
    {
        var (images, labels) = IdxFiles.WriteTiny(_folder, gzip: true);
        var output = Path.Combine(_folder, "tiny");
        var storage = Path.Combine(_folder, "storage");

        var import = await InProcessCli.RunAsync("dataset", "import-idx", images, labels, output, "--classes", "fashion-mnist", "--format", "json");
        var scan = await InProcessCli.RunAsync("dataset", "scan", output, "--storage", storage, "--format", "json");

        import.ExitCode.ShouldBe(0, import.Error);
        using (var json = JsonDocument.Parse(import.Output))
        {
            json.RootElement.GetProperty("images").GetInt32().ShouldBe(5);
            json.RootElement.GetProperty("classes").EnumerateArray().Select(c => c.GetProperty("name").GetString()).ShouldBe(["T-shirt_top", "Trouser", "Pullover"]);
        }

        scan.ExitCode.ShouldBe(0, scan.Error);
        using (var json = JsonDocument.Parse(scan.Output))
        {
            var id = json.RootElement.GetProperty("id").GetString()!;
            json.RootElement.GetProperty("images").GetInt32().ShouldBe(5);
            json.RootElement.GetProperty("classes").EnumerateArray().Select(c => (c.GetProperty("name").GetString(), c.GetProperty("images").GetInt32()))
                .ShouldBe([("Pullover", 1), ("T-shirt_top", 2), ("Trouser", 2)]);
            json.RootElement.GetProperty("skipped").GetArrayLength().ShouldBe(0);
            File.Exists(Path.Combine(storage, "datasets", id, "manifest.tsv")).ShouldBeTrue();
        }
    }

    [Fact]
    public async Task Bad_dataset_input_is_one_line_on_stderr_and_exit_code_2()
    {
        var (_, labels) = IdxFiles.WriteTiny(_folder, gzip: false);
        var missing = Path.Combine(_folder, "missing.gz");

        foreach (var args in new[]
        {
            new[] { "dataset", "import-idx", missing, labels, Path.Combine(_folder, "out") },
            ["dataset", "import-idx", labels, labels, Path.Combine(_folder, "out")],
            ["dataset", "import-idx", labels, labels, Path.Combine(_folder, "out"), "--classes", "cifar"],
            ["dataset", "scan", labels, "--storage", Path.Combine(_folder, "storage")],
        })
        {
            var run = await InProcessCli.RunAsync(args);

            run.ExitCode.ShouldBe(2, string.Join(' ', args));
            var lines = run.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            lines.Length.ShouldBe(1, run.Error);
            lines[0].ShouldStartWith("coordinator: error: ");
        }
    }
}
