using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using Cluster.Coordinator.Datasets;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

public sealed class DatasetImportIdxSettings : GlobalSettings
{
    [CommandArgument(0, "<IMAGES>")]
    [Description("IDX image file, plain or gzip (e.g. t10k-images-idx3-ubyte.gz).")]
    public string Images { get; init; } = "";

    [CommandArgument(1, "<LABELS>")]
    [Description("The matching IDX label file (e.g. t10k-labels-idx1-ubyte.gz).")]
    public string Labels { get; init; } = "";

    [CommandArgument(2, "<OUT_DIR>")]
    [Description("New or empty folder to write <class>/<index>.png into.")]
    public string OutputDirectory { get; init; } = "";

    [CommandOption("--classes <NAMES>")]
    [Description("Class folder names: digits (the label numbers) or fashion-mnist (T-shirt_top, Trouser, ...).")]
    [DefaultValue("digits")]
    public string Classes { get; init; } = "digits";

    [CommandOption("--limit <N>")]
    [Description("Import only the first N images.")]
    public int? Limit { get; init; }

    public IdxClassNames ClassNames => Classes == "fashion-mnist" ? IdxClassNames.FashionMnist : IdxClassNames.Digits;

    public override ValidationResult Validate()
    {
        if (Classes is not ("digits" or "fashion-mnist"))
        {
            return ValidationResult.Error($"--classes '{Classes}' is not one of: digits, fashion-mnist.");
        }
        if (Limit is < 1)
        {
            return ValidationResult.Error($"--limit {Limit} must be at least 1.");
        }
        return base.Validate();
    }
}

/// <summary>`coordinator dataset import-idx`: an MNIST-format image/label pair becomes an ImageFolder tree of PNGs.</summary>
public sealed class DatasetImportIdxCommand : AsyncCommand<DatasetImportIdxSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, DatasetImportIdxSettings settings, CancellationToken cancellationToken)
    {
        var options = new IdxImportOptions(settings.ClassNames, settings.Limit);
        var clock = Stopwatch.StartNew();
        IdxImportResult result;
        if (settings.Format == OutputFormat.Table && AnsiConsole.Profile.Capabilities.Interactive)
        {
            result = await AnsiConsole.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .StartAsync(async progress =>
                {
                    ProgressTask task = progress.AddTask($"writing PNGs into {Markup.Escape(settings.OutputDirectory)}", maxValue: 1);
                    var report = new ProgressBar(task);
                    IdxImportResult imported = await IdxImporter.ImportAsync(settings.Images, settings.Labels, settings.OutputDirectory, options, report, cancellationToken);
                    task.Value = task.MaxValue;
                    return imported;
                });
        }
        else
        {
            result = await IdxImporter.ImportAsync(settings.Images, settings.Labels, settings.OutputDirectory, options, null, cancellationToken);
        }
        double seconds = clock.Elapsed.TotalSeconds;

        CliOutput.Write(settings, new
        {
            outputDirectory = result.OutputDirectory,
            images = result.Images,
            rows = result.Rows,
            columns = result.Columns,
            classes = result.Classes.Select(c => new { label = c.Label, name = c.Name, images = c.Images }),
            seconds = Math.Round(seconds, 2),
        }, () =>
        {
            var table = new Table().Border(TableBorder.Rounded).AddColumns("label", "class folder", "images");
            foreach (ImportedClass c in result.Classes)
            {
                table.AddRow(c.Label.ToString(CultureInfo.InvariantCulture), Markup.Escape(c.Name), c.Images.ToString("N0", CultureInfo.InvariantCulture));
            }
            AnsiConsole.Write(table);
            AnsiConsole.MarkupLine(
                $"Imported [green]{result.Images:N0}[/] images ({result.Rows}x{result.Columns}) in {result.Classes.Count} classes into "
                + $"{Markup.Escape(result.OutputDirectory)} in {seconds:F1} s. Next: `coordinator dataset scan {Markup.Escape(result.OutputDirectory)}`.");
        });
        return 0;
    }

    /// <summary>
    /// Moves the bar on the importer's thread: System.Progress would post each report to the thread pool, where a
    /// late one could pull the finished bar back below 100%.
    /// </summary>
    private sealed class ProgressBar(ProgressTask task) : IProgress<IdxImportProgress>
    {
        public void Report(IdxImportProgress value)
        {
            task.MaxValue = value.Total;
            task.Value = value.Written;
        }
    }
}
