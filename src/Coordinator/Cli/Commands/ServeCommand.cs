using Cluster.Hosting;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Serilog.Extensions.Logging;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

/// <summary>
/// `coordinator serve`: the long-running coordinator service. Waits (with backoff) for the broker and the
/// database, brings the schema up to date (it is the single writer of cluster state), then consumes worker
/// events until SIGTERM.
/// </summary>
public sealed class ServeCommand : AsyncCommand<GlobalSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, GlobalSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings, serviceLogging: true);
        using var loggerFactory = new SerilogLoggerFactory(Serilog.Log.Logger);
        ILogger logger = loggerFactory.CreateLogger("coordinator");
        try
        {
            if (!cli.IsEmbedded)
            {
                await ConnectivityCheck.WaitUntilReachableAsync(ct => ConnectivityCheck.ProbeRabbitMqAsync(cli.Settings.RabbitMq, ct), logger, cancellationToken);
            }
            await ConnectivityCheck.WaitUntilReachableAsync(ct => ConnectivityCheck.ProbeDatabaseAsync(cli.Database, ct), logger, cancellationToken);
            await cli.Database.MigrateAsync(cancellationToken);
            using IHost host = cli.BuildHost(coordinatorService: true);
            logger.LogInformation("Coordinator service up ({Mode}): {Broker}, {Database}, storage {StorageRoot}",
                cli.Settings.Mode, cli.IsEmbedded ? "in-memory bus" : cli.Settings.RabbitMq.Describe(), cli.Database.Describe(), cli.Settings.StorageRoot);
            await host.RunAsync(cancellationToken);
            return 0;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            return 0;
        }
    }
}
