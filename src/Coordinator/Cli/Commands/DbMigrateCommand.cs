using Cluster.Hosting;
using Cluster.Storage.Database;
using Microsoft.EntityFrameworkCore;
using System.ComponentModel;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

public sealed class DbMigrateSettings : GlobalSettings
{
    [CommandOption("--worker-role <ROLE>")]
    [Description("After migrating, grant this existing PostgreSQL role the rights a gpu-worker needs and no more "
        + "(read the tables, write its results; no schema changes, no sweeps or trials). Run it again after each upgrade.")]
    public string? WorkerRole { get; init; }
}

/// <summary>
/// `coordinator db migrate [--worker-role ROLE]`: applies the pending schema migrations of the configured database, as
/// the role that owns the schema; with `--worker-role`, grants the workers' own role its rights on the tables now there.
/// </summary>
public sealed class DbMigrateCommand : AsyncCommand<DbMigrateSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, DbMigrateSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        if (settings.WorkerRole is not null && cli.Database.Provider != DatabaseProvider.Postgres)
        {
            throw new ClusterConfigurationException($"--worker-role grants a PostgreSQL role; {cli.Database.Describe()} has no roles (use --cluster with a PostgreSQL connection string)");
        }
        await ConnectivityCheck.RequireAsync(ct => ConnectivityCheck.ProbeDatabaseAsync(cli.Database, ct), cancellationToken);
        List<string> pending;
        await using (ClusterDbContext db = cli.Database.CreateDbContext())
        {
            pending = (await db.Database.GetPendingMigrationsAsync(cancellationToken)).ToList();
        }
        await cli.Database.MigrateAsync(cancellationToken);
        if (settings.WorkerRole is not null)
        {
            await using ClusterDbContext db = cli.Database.CreateDbContext();
            try
            {
                await WorkerDatabaseRole.GrantAsync(db, settings.WorkerRole, cancellationToken);
            }
            catch (ArgumentException e)
            {
                throw new ClusterConfigurationException(e.Message);
            }
            catch (Npgsql.PostgresException e) when (e.SqlState == Npgsql.PostgresErrorCodes.UndefinedObject)
            {
                throw new ClusterConfigurationException($"--worker-role {settings.WorkerRole}: no such role in {cli.Database.Describe()} (create it first: CREATE ROLE {settings.WorkerRole} LOGIN PASSWORD '...')");
            }
        }
        CliOutput.Write(settings, new { database = cli.Database.Describe(), applied = pending, worker_role = settings.WorkerRole }, () =>
        {
            if (pending.Count == 0)
            {
                AnsiConsole.MarkupLineInterpolated($"{cli.Database.Describe()}: schema already up to date.");
            }
            else
            {
                AnsiConsole.MarkupLineInterpolated($"{cli.Database.Describe()}: applied {pending.Count} migration(s): {string.Join(", ", pending)}");
            }
            if (settings.WorkerRole is not null)
            {
                AnsiConsole.MarkupLineInterpolated($"Worker role {settings.WorkerRole}: granted reads and the workers' writes.");
            }
        });
        return 0;
    }
}
