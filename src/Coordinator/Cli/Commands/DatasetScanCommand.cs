using System.ComponentModel;
using System.Globalization;
using Cluster.Storage.Datasets;
using Cluster.Storage.Files;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

public sealed class DatasetScanSettings : GlobalSettings
{
    [CommandArgument(0, "<DIR>")]
    [Description("The dataset folder: one subfolder per class (ImageFolder), or the folder --manifest paths are relative to.")]
    public string Directory { get; init; } = "";

    [CommandOption("--manifest <FILE>")]
    [Description("A list of 'path<TAB>label' lines (paths relative to DIR) to use instead of the class subfolders.")]
    public string? Manifest { get; init; }

    [CommandOption("--show-skipped <N>")]
    [Description("How many skipped entries to list in the table (all are in datasets/<id>/skipped.tsv).")]
    [DefaultValue(20)]
    public int ShowSkipped { get; init; }
}

/// <summary>
/// `coordinator dataset scan`: hashes a folder of images into the storage root's datasets/&lt;id&gt;/manifest.tsv and
/// prints the dataset id (the version every feature set of it is keyed by), its classes and what was skipped.
/// </summary>
public sealed class DatasetScanCommand : AsyncCommand<DatasetScanSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, DatasetScanSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        var store = new FileStore(cli.Settings.StorageRoot);
        Task<DatasetManifest> Scan() => settings.Manifest is null
            ? DatasetScanner.ScanFolderAsync(settings.Directory, null, cancellationToken)
            : DatasetScanner.ScanManifestAsync(settings.Manifest, settings.Directory, null, cancellationToken);
        DatasetManifest manifest = settings.Format == OutputFormat.Table && AnsiConsole.Profile.Capabilities.Interactive
            ? await AnsiConsole.Status().StartAsync($"Hashing the images under {Markup.Escape(settings.Directory)}...", _ => Scan())
            : await Scan();
        if (manifest.Entries.Count == 0)
        {
            SkippedImage? first = manifest.Skipped.FirstOrDefault();
            throw new DatasetInputException(
                $"No images found under '{settings.Directory}'"
                + (first is null ? " (expected one subfolder per class, or --manifest)." : $"; {manifest.Skipped.Count} skipped, e.g. '{PrintableText.Escape(first.Path)}': {first.Message}."));
        }
        await manifest.SaveAsync(store, cancellationToken);
        string manifestPath = store.Resolve($"{manifest.Directory}/{DatasetManifest.ManifestFileName}");

        CliOutput.Write(settings, new
        {
            id = manifest.Id,
            sha256 = manifest.ContentSha256,
            root = manifest.Root,
            manifest = manifestPath,
            images = manifest.Entries.Count,
            classes = manifest.Classes.Select(c => new { index = c.Index, name = c.Name, images = c.Images }),
            skipped = manifest.Skipped.Select(s => new { path = s.Path, reason = s.Reason.Code(), message = s.Message }),
        }, () =>
        {
            AnsiConsole.Write(CliOutput.KeyValueTable($"dataset {manifest.Id}",
            [
                ("id", manifest.Id),
                ("images", manifest.Entries.Count.ToString("N0", CultureInfo.InvariantCulture)),
                ("classes", manifest.Classes.Count.ToString(CultureInfo.InvariantCulture)),
                ("skipped", manifest.Skipped.Count.ToString("N0", CultureInfo.InvariantCulture)),
                ("root", manifest.Root),
                ("manifest", manifestPath),
            ]));
            var classes = new Table().Border(TableBorder.Rounded).AddColumns("index", "class", "images");
            foreach (DatasetClass c in manifest.Classes)
            {
                classes.AddRow(c.Index.ToString(CultureInfo.InvariantCulture), Markup.Escape(c.Name), c.Images.ToString("N0", CultureInfo.InvariantCulture));
            }
            AnsiConsole.Write(classes);
            if (manifest.Skipped.Count > 0)
            {
                var skipped = new Table().Border(TableBorder.Rounded).AddColumns("skipped", "reason", "why");
                foreach (SkippedImage s in manifest.Skipped.Take(settings.ShowSkipped))
                {
                    skipped.AddRow(Markup.Escape(PrintableText.Escape(s.Path)), s.Reason.Code(), Markup.Escape(s.Message));
                }
                AnsiConsole.Write(skipped);
                if (manifest.Skipped.Count > settings.ShowSkipped)
                {
                    AnsiConsole.MarkupLine($"[grey]... and {manifest.Skipped.Count - settings.ShowSkipped:N0} more in {Markup.Escape(store.Resolve($"{manifest.Directory}/{DatasetManifest.SkippedFileName}"))}[/]");
                }
            }
        });
        return 0;
    }
}
