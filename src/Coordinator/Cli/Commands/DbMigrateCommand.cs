using Cluster.Hosting;
using Cluster.Storage.Database;
using Microsoft.EntityFrameworkCore;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

/// <summary>`coordinator db migrate`: applies the pending schema migrations of the configured database.</summary>
public sealed class DbMigrateCommand : AsyncCommand<GlobalSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, GlobalSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        await ConnectivityCheck.RequireAsync(ct => ConnectivityCheck.ProbeDatabaseAsync(cli.Database, ct), cancellationToken);
        List<string> pending;
        await using (ClusterDbContext db = cli.Database.CreateDbContext())
        {
            pending = (await db.Database.GetPendingMigrationsAsync(cancellationToken)).ToList();
        }
        await cli.Database.MigrateAsync(cancellationToken);
        CliOutput.Write(settings, new { database = cli.Database.Describe(), applied = pending }, () =>
        {
            if (pending.Count == 0)
            {
                AnsiConsole.MarkupLineInterpolated($"{cli.Database.Describe()}: schema already up to date.");
            }
            else
            {
                AnsiConsole.MarkupLineInterpolated($"{cli.Database.Describe()}: applied {pending.Count} migration(s): {string.Join(", ", pending)}");
            }
        });
        return 0;
    }
}
