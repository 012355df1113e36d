using Cluster.Coordinator.Reports;
using Cluster.Hosting;
using Cluster.Storage.Files;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

/// <summary>`sweep report ID`: writes the sweep's HTML report (reports/&lt;id&gt;/index.html under the storage root) and prints its path.</summary>
public sealed class SweepReportCommand : AsyncCommand<SweepIdSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, SweepIdSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        Guid id = await SweepIds.ResolveAsync(cli, settings.Id, cancellationToken);
        string path = await SweepReportWriter.WriteAsync(cli.Database, new FileStore(cli.Settings.StorageRoot), id, cancellationToken)
            ?? throw new ClusterConfigurationException($"no sweep has id '{settings.Id}' (see `coordinator sweep list`).");
        CliOutput.Write(settings, new { sweep = id, report = path }, () => Console.Out.WriteLine(path));
        return 0;
    }

    /// <summary>
    /// `sweep run` and `demo`: the report of a sweep that has just ended, its path on a line of its own. The sweep's
    /// results are already printed, so a report that cannot be written is a warning, not a failure of the sweep.
    /// </summary>
    public static async Task WriteAfterRunAsync(CliContext cli, Guid sweepId, bool table, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(cli);
        try
        {
            string? path = await SweepReportWriter.WriteAsync(cli.Database, new FileStore(cli.Settings.StorageRoot), sweepId, ct);
            if (table && path is not null)
            {
                AnsiConsole.MarkupLine($"[grey]report:[/] {Markup.Escape(path)}");
            }
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            Console.Error.WriteLine($"coordinator: warning: the report of sweep {sweepId} was not written: {e.GetBaseException().Message}");
        }
    }
}
