using System.ComponentModel;
using Cluster.Coordinator.Orchestration;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Microsoft.EntityFrameworkCore;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

public sealed class WorkersSettings : GlobalSettings
{
    /// <summary>Three of the worker's default heartbeat intervals (5 s).</summary>
    public const int DefaultLostAfterSeconds = 15;

    [CommandOption("--all")]
    [Description("Also list stopped and lost workers.")]
    public bool All { get; init; }

    [CommandOption("--lost-after <SECONDS>")]
    [Description("A worker silent this long is shown as lost (default: three heartbeat intervals).")]
    [DefaultValue(DefaultLostAfterSeconds)]
    public int LostAfterSeconds { get; init; }
}

/// <summary>`coordinator workers`: the workers known from their heartbeats (as recorded by `coordinator serve`).</summary>
public sealed class WorkersCommand : AsyncCommand<WorkersSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, WorkersSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        await cli.RequireDatabaseAsync(cancellationToken);
        DateTime now = DateTime.UtcNow;
        List<WorkerRecord> workers;
        await using (ClusterDbContext db = cli.Database.CreateDbContext())
        {
            workers = await db.Workers.AsNoTracking().OrderBy(w => w.Id).ToListAsync(cancellationToken);
        }
        var rows = workers
            .Select(w => new
            {
                id = w.Id,
                host = w.Host,
                device = w.Device,
                version = w.Version,
                status = WorkerLiveness.Of(w, now, TimeSpan.FromSeconds(settings.LostAfterSeconds)),
                lastHeartbeat = w.LastHeartbeat,
                secondsSinceHeartbeat = Math.Round((now - w.LastHeartbeat).TotalSeconds, 1),
                currentJob = w.CurrentJob,
                // Alive but held: the job waits for something outside it (a full or read-only volume), not failing.
                waiting = w.Status == WorkerStatus.Stopped ? null : w.Waiting,
                imagesPerSecond = w.ImagesPerSecond,
                residentMiB = w.ResidentBytes is long bytes ? bytes / (1024 * 1024) : (long?)null,
                kernelCheck = w.KernelCheck,
            })
            .Where(w => settings.All || w.status == WorkerLiveness.Alive)
            .ToList();

        CliOutput.Write(settings, rows, () =>
        {
            if (rows.Count == 0)
            {
                AnsiConsole.MarkupLine(settings.All
                    ? "[yellow]No worker has ever reported.[/] Start one with `gpu-worker --device cpu` (and `coordinator serve`)."
                    : "[yellow]No live workers.[/] (`--all` lists stopped and lost ones.)");
                return;
            }
            var table = new Table().Border(TableBorder.Rounded)
                .AddColumns("worker", "host", "device", "version", "status", "last heartbeat", "current job", "images/s", "memory", "kernels");
            foreach (var w in rows)
            {
                string status = w.status switch { "alive" => "[green]alive[/]", "lost" => "[red]lost[/]", _ => "[grey]stopped[/]" };
                table.AddRow(
                    new Text(w.id), new Text(w.host), new Text(w.device), new Text(w.version), new Markup(status),
                    new Text($"{w.secondsSinceHeartbeat:F0} s ago"),
                    w.waiting is null ? new Text(w.currentJob ?? "-") : new Markup($"{Markup.Escape(w.currentJob ?? "-")} [yellow]waits for {Markup.Escape(w.waiting)}[/]"),
                    new Text(w.imagesPerSecond is double ips ? ips.ToString("F1", System.Globalization.CultureInfo.InvariantCulture) : "-"),
                    new Text(w.residentMiB is long mib ? $"{mib} MiB" : "-"),
                    new Text(w.kernelCheck ?? "-"));
            }
            AnsiConsole.Write(table);
        });
        return 0;
    }
}
