using System.Globalization;
using Cluster.Storage.Files;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

/// <summary>`coordinator storage usage`: what the storage root keeps, where, and how big (areas, feature sets, checkpoints).</summary>
public sealed class StorageUsageCommand : Command<GlobalSettings>
{
    public override int Execute(CommandContext context, GlobalSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        string root = Path.GetFullPath(cli.Settings.StorageRoot);
        // A missing root is reported, not created: looking must not change anything.
        StorageUsage usage = Directory.Exists(root) ? StorageUsage.Measure(new FileStore(root)) : new StorageUsage(root, 0, [], [], []);
        CliOutput.Write(settings, usage, () =>
        {
            AnsiConsole.MarkupLineInterpolated($"Storage root [bold]{usage.Root}[/]: {Size(usage.TotalBytes)}");
            if (usage.Areas.Count == 0)
            {
                AnsiConsole.MarkupLine("Nothing stored yet.");
                return;
            }
            var areas = new Table().Border(TableBorder.Rounded).AddColumns("area", "size", "files");
            foreach (UsageEntry area in usage.Areas)
            {
                areas.AddRow(Markup.Escape(area.Path), Size(area.Bytes), area.Files.ToString(CultureInfo.InvariantCulture));
            }
            AnsiConsole.Write(areas);
            if (usage.FeatureSets.Count > 0)
            {
                var sets = new Table().Border(TableBorder.Rounded).Title("feature sets").AddColumns("path", "size", "files");
                foreach (UsageEntry set in usage.FeatureSets)
                {
                    sets.AddRow(Markup.Escape(set.Path), Size(set.Bytes), set.Files.ToString(CultureInfo.InvariantCulture));
                }
                AnsiConsole.Write(sets);
            }
            if (usage.Checkpoints.Count > 0)
            {
                var trials = new Table().Border(TableBorder.Rounded).Title("checkpoints").AddColumns("sweep", "trial", "segments kept", "size");
                foreach (TrialCheckpointUsage trial in usage.Checkpoints)
                {
                    trials.AddRow(Markup.Escape(trial.SweepId), Markup.Escape(trial.TrialId), string.Join(", ", trial.Segments), Size(trial.Bytes));
                }
                AnsiConsole.Write(trials);
            }
        });
        return 0;
    }

    private static string Size(long bytes) => bytes switch
    {
        < 1024 => $"{bytes} B",
        < 1024 * 1024 => $"{bytes / 1024.0:F1} KiB",
        < 1024L * 1024 * 1024 => $"{bytes / (1024.0 * 1024):F1} MiB",
        _ => $"{bytes / (1024.0 * 1024 * 1024):F2} GiB",
    };
}
