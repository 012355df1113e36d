using System.Globalization;
using System.Text.Json;
using AngleSharp.Dom;
using AngleSharp.Html.Dom;
using Cluster.TestSupport.Training;
using Shouldly;

namespace Cluster.Coordinator.Tests.Cli;

/// <summary>
/// `sweep report` on a real embedded sweep: `sweep run` writes reports/ID/index.html, which parses as HTML, holds its
/// plots as inline SVG, fetches nothing, lists every completed trial and shows what sharing the frozen prefix saved.
/// </summary>
[Collection(nameof(ConsoleCollection))]
public sealed class SweepReportCommandTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("sweep-report-tests-").FullName;

    public void Dispose()
    {
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        Directory.Delete(_root, recursive: true);
    }

    private string Storage => Path.Combine(_root, "storage");

    private Task<(int ExitCode, string Output, string Error)> RunAsync(params string[] args) =>
        InProcessCli.RunAsync([.. args, "--embedded", "--storage", Storage]);

    [Fact]
    public async Task A_sweep_runs_report_parses_as_html_with_its_plots_its_trials_and_what_sharing_saved()
    {
        StripeImages.Write(Path.Combine(_root, "train"), perClass: 16);
        StripeImages.Write(Path.Combine(_root, "test"), perClass: 4, seed: 99);
        // Three feature-extractor trials on one cutoff: they share its train and test feature sets (the logistic head uses no rate).
        string spec = Path.Combine(_root, "grid.yaml");
        File.WriteAllText(spec, """
            name: stripes-report
            dataset:
              train: train
              validation: 0.25
              test: test
            model: resnet18
            weights: random
            input_size: 32
            strategy: feature-extractor
            cutoff: layer3
            head: [logistic, mlp]
            lr: [0.01, 0.001]
            epochs: 2
            batch_size: 8
            seed: 5
            parallelism: 2
            """);

        (int exitCode, string output, string error) = await RunAsync("sweep", "run", spec, "--format", "json");

        exitCode.ShouldBe(0, error);
        using JsonDocument results = JsonDocument.Parse(output);
        string sweepId = results.RootElement.GetProperty("sweep").GetString()!;
        string relative = results.RootElement.GetProperty("report").GetString()!;
        relative.ShouldBe($"reports/{sweepId}/index.html");
        File.Exists(Path.Combine(Storage, relative)).ShouldBeTrue("sweep run writes the report its results name");
        string[] completed = [.. results.RootElement.GetProperty("trials").EnumerateArray()
            .Where(t => t.GetProperty("status").GetString() == "completed").Select(t => t.GetProperty("id").GetString()!)];
        completed.Length.ShouldBe(3);

        (exitCode, output, error) = await RunAsync("sweep", "report", sweepId[..8], "--format", "json");

        exitCode.ShouldBe(0, error);
        using JsonDocument printed = JsonDocument.Parse(output);
        printed.RootElement.GetProperty("sweep").GetString().ShouldBe(sweepId);
        string path = printed.RootElement.GetProperty("report").GetString()!;
        path.ShouldBe(Path.Combine(Path.GetFullPath(Storage), "reports", sweepId, "index.html"));

        IHtmlDocument document = Reports.SweepReportTests.Parse(await File.ReadAllTextAsync(path));
        document.QuerySelector("h1")!.TextContent.ShouldBe("stripes-report");
        // A grid has no rungs: accuracy against learning rate, learning curves, and time.
        IElement[] plots = [.. document.QuerySelectorAll("svg")];
        plots.Length.ShouldBe(3);
        plots.Select(p => p.Id).ShouldBe(["accuracy-lr", "learning-curves", "time"]);
        document.QuerySelector("svg#accuracy-lr")!.TextContent.ShouldContain("learning rate (log scale)");
        document.QuerySelector("svg#time")!.TextContent.ShouldContain("saved by sharing");
        document.Body!.TextContent.ShouldContain("not ASHA");

        // Self-contained: no script, stylesheet or image to load, no attribute pointing at the network.
        document.QuerySelectorAll("script, link, img, iframe, object").Length.ShouldBe(0);
        foreach (IElement element in document.All)
        {
            foreach (IAttr attribute in element.Attributes.Where(a => a.LocalName is "src" or "href"))
            {
                attribute.Value.ShouldNotStartWith("http://", Case.Insensitive);
                attribute.Value.ShouldNotStartWith("https://", Case.Insensitive);
            }
        }

        document.QuerySelectorAll("table.leaderboard tbody tr").Select(r => r.GetAttribute("data-trial")).ShouldBe(completed, ignoreOrder: true);

        // Each set was extracted once and used by the three trials: sharing saved (3 − 1) × its seconds, summed.
        IElement[] sets = [.. document.QuerySelectorAll("table.sets tbody tr")];
        sets.Length.ShouldBe(2, "the cutoff's train and test sets");
        double expected = 0;
        foreach (IElement set in sets)
        {
            string[] cells = [.. set.QuerySelectorAll("td").Select(td => td.TextContent)];
            int.Parse(cells[3], CultureInfo.InvariantCulture).ShouldBe(3);
            expected += (3 - 1) * double.Parse(cells[4], CultureInfo.InvariantCulture);
        }
        double saved = double.Parse(document.QuerySelector("#seconds-saved-by-sharing")!.TextContent.Replace(" s", "", StringComparison.Ordinal), CultureInfo.InvariantCulture);
        saved.ShouldBeGreaterThan(0);
        saved.ShouldBe(expected, tolerance: 0.1 * sets.Length * 2);

        // The table form prints the path alone.
        (exitCode, output, error) = await RunAsync("sweep", "report", sweepId);
        exitCode.ShouldBe(0, error);
        output.Trim().ShouldBe(path);
    }

    [Theory]
    [InlineData("0123abcd", "no sweep has id '0123abcd'")]
    [InlineData("01", "sweep id '01' is too short")]
    [InlineData("00000000-0000-0000-0000-000000000001", "no sweep has id '00000000-0000-0000-0000-000000000001'")]
    public async Task An_unknown_or_malformed_sweep_id_is_one_line_and_exit_2(string id, string expected)
    {
        (int exitCode, string output, string error) = await RunAsync("sweep", "report", id);

        exitCode.ShouldBe(2, output + error);
        error.Trim().Split('\n').Length.ShouldBe(1, error);
        error.ShouldContain(expected);
        Directory.Exists(Path.Combine(Storage, "reports")).ShouldBeFalse();
    }
}
