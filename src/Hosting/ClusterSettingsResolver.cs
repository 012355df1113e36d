using System.Data.Common;
using Cluster.Storage.Database;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Configuration;
using Npgsql;

namespace Cluster.Hosting;

/// <summary>
/// Turns configuration (appsettings, environment variables, flags) into <see cref="ClusterRuntimeSettings"/>,
/// failing with one clear line for any value that cannot work.
/// </summary>
public static class ClusterSettingsResolver
{
    public static ClusterRuntimeSettings Resolve(IConfiguration configuration, RuntimeMode? modeOverride = null)
    {
        var cluster = configuration.GetSection(ClusterOptions.SectionName).Get<ClusterOptions>() ?? new ClusterOptions();
        var rabbit = configuration.GetSection(RabbitMqOptions.SectionName).Get<RabbitMqOptions>() ?? new RabbitMqOptions();
        var database = configuration.GetSection(DatabaseOptions.SectionName).Get<DatabaseOptions>() ?? new DatabaseOptions();

        RuntimeMode mode = modeOverride ?? ParseMode(cluster.Mode, rabbit);
        if (string.IsNullOrWhiteSpace(cluster.StorageRoot))
        {
            throw new ClusterConfigurationException("Cluster:StorageRoot is empty: set it to a folder (shared volume in cluster mode).");
        }
        string storageRoot = Path.GetFullPath(cluster.StorageRoot);

        if (mode == RuntimeMode.Cluster)
        {
            if (string.IsNullOrWhiteSpace(rabbit.Host))
            {
                throw new ClusterConfigurationException(
                    "cluster mode needs a broker: set RabbitMq:Host (environment variable RabbitMq__Host), or use --embedded.");
            }
            if (rabbit.Port is < 1 or > 65535)
            {
                throw new ClusterConfigurationException($"RabbitMq:Port {rabbit.Port} is not a TCP port (1-65535).");
            }
            if (rabbit.HeartbeatSeconds is < 0 or > ushort.MaxValue)
            {
                throw new ClusterConfigurationException($"RabbitMq:HeartbeatSeconds {rabbit.HeartbeatSeconds} is not a heartbeat interval (0 for none, or 1-65535 seconds).");
            }
            BrokerTls.Validate(rabbit);
        }

        DatabaseProvider provider = ParseProvider(database.Provider, mode);
        string connectionString = database.ConnectionString ?? "";
        if (provider == DatabaseProvider.Postgres)
        {
            if (string.IsNullOrWhiteSpace(connectionString))
            {
                throw new ClusterConfigurationException(
                    "cluster mode needs PostgreSQL: set Database:ConnectionString (environment variable Database__ConnectionString), e.g. Host=127.0.0.1;Port=5432;Database=cluster;Username=cluster.");
            }
            ValidateConnectionString(() => new NpgsqlConnectionStringBuilder(connectionString), "PostgreSQL");
        }
        else
        {
            if (string.IsNullOrWhiteSpace(connectionString))
            {
                connectionString = $"Data Source={Path.Combine(storageRoot, "cluster.db")}";
            }
            ValidateConnectionString(() => new SqliteConnectionStringBuilder(connectionString), "SQLite");
        }

        return new ClusterRuntimeSettings(mode, storageRoot, rabbit, provider, connectionString);
    }

    private static RuntimeMode ParseMode(string? mode, RabbitMqOptions rabbit) =>
        mode?.Trim().ToLowerInvariant() switch
        {
            null or "" or "auto" => string.IsNullOrWhiteSpace(rabbit.Host) ? RuntimeMode.Embedded : RuntimeMode.Cluster,
            "embedded" => RuntimeMode.Embedded,
            "cluster" => RuntimeMode.Cluster,
            _ => throw new ClusterConfigurationException($"Cluster:Mode '{mode}' is not one of: embedded, cluster, auto."),
        };

    private static DatabaseProvider ParseProvider(string? provider, RuntimeMode mode) =>
        provider?.Trim().ToLowerInvariant() switch
        {
            null or "" => mode == RuntimeMode.Cluster ? DatabaseProvider.Postgres : DatabaseProvider.Sqlite,
            "postgres" or "postgresql" or "npgsql" => DatabaseProvider.Postgres,
            "sqlite" => DatabaseProvider.Sqlite,
            _ => throw new ClusterConfigurationException($"Database:Provider '{provider}' is not one of: postgres, sqlite."),
        };

    private static void ValidateConnectionString(Func<DbConnectionStringBuilder> parse, string what)
    {
        try
        {
            _ = parse();
        }
        catch (Exception e) when (e is ArgumentException or FormatException or KeyNotFoundException or InvalidOperationException)
        {
            // The connection string may hold a password: name the setting and the parser's complaint, not the value.
            throw new ClusterConfigurationException($"Database:ConnectionString is not a valid {what} connection string: {e.Message}", e);
        }
    }
}
