using Cluster.Hosting;
using Npgsql;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

/// <summary>`coordinator config show`: the settings in force after appsettings, environment and flags; secrets masked.</summary>
public sealed class ConfigShowCommand : Command<GlobalSettings>
{
    public override int Execute(CommandContext context, GlobalSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        ClusterRuntimeSettings s = cli.Settings;
        bool cluster = s.Mode == RuntimeMode.Cluster;
        string database = MaskPassword(s.DatabaseConnectionString);
        CliOutput.Write(settings, new
        {
            mode = s.Mode.ToString().ToLowerInvariant(),
            storageRoot = s.StorageRoot,
            rabbitMq = cluster
                ? new { host = s.RabbitMq.Host, port = s.RabbitMq.Port, virtualHost = s.RabbitMq.VirtualHost, username = s.RabbitMq.Username, password = "***",
                    tls = s.RabbitMq.UseTls
                        ? new { serverName = s.RabbitMq.TlsServerName ?? s.RabbitMq.Host, caFile = s.RabbitMq.TlsCaFile, clientCertificate = s.RabbitMq.TlsClientCertificate }
                        : null }
                : null,
            database = new { provider = s.DatabaseProvider.ToString().ToLowerInvariant(), connectionString = database },
            configurationFile = Path.Combine(AppContext.BaseDirectory, "appsettings.json"),
        }, () =>
        {
            var rows = new List<(string, string)>
            {
                ("mode", s.Mode.ToString().ToLowerInvariant() + (cluster ? "" : " (in-memory bus, SQLite, local folder)")),
                ("storage root", s.StorageRoot),
                ("bus", cluster ? $"{s.RabbitMq.Describe()} as '{s.RabbitMq.Username}'" : "in-memory"),
                ("database", $"{s.DatabaseProvider.ToString().ToLowerInvariant()}: {database}"),
                ("configuration", $"{Path.Combine(AppContext.BaseDirectory, "appsettings.json")}, environment (e.g. RabbitMq__Host), --set KEY=VALUE"),
            };
            AnsiConsole.Write(CliOutput.KeyValueTable("configuration in force", rows));
        });
        return 0;
    }

    private static string MaskPassword(string connectionString)
    {
        try
        {
            var builder = new NpgsqlConnectionStringBuilder(connectionString);
            if (!string.IsNullOrEmpty(builder.Password))
            {
                builder.Password = "***";
            }
            return builder.ConnectionString;
        }
        catch (ArgumentException)
        {
            return connectionString;
        }
    }
}
