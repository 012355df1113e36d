using EFCore.NamingConventions;
using Microsoft.Data.Sqlite;
using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace Cluster.Storage.Database;

/// <summary>
/// Creates <see cref="ClusterDbContext"/> instances for one configured provider and connection string.
/// Options are built once; each context is short-lived (one unit of work).
/// </summary>
public sealed class ClusterDbContextFactory : IDbContextFactory<ClusterDbContext>
{
    private readonly DbContextOptions<PostgresClusterDbContext>? _postgres;
    private readonly DbContextOptions<SqliteClusterDbContext>? _sqlite;

    public ClusterDbContextFactory(DatabaseProvider provider, string connectionString)
    {
        Provider = provider;
        ConnectionString = connectionString;
        if (provider == DatabaseProvider.Postgres)
        {
            _postgres = new DbContextOptionsBuilder<PostgresClusterDbContext>()
                .UseNpgsql(connectionString, npgsql => npgsql.EnableRetryOnFailure(3))
                .UseSnakeCaseNamingConvention()
                .Options;
        }
        else
        {
            _sqlite = new DbContextOptionsBuilder<SqliteClusterDbContext>()
                .UseSqlite(connectionString)
                .UseSnakeCaseNamingConvention()
                .Options;
        }
    }

    public DatabaseProvider Provider { get; }

    public string ConnectionString { get; }

    /// <summary>Host and port (PostgreSQL) or file (SQLite), for messages; never includes credentials.</summary>
    public string Describe()
    {
        if (Provider == DatabaseProvider.Postgres)
        {
            var builder = new NpgsqlConnectionStringBuilder(ConnectionString);
            return $"PostgreSQL at {builder.Host}:{builder.Port}/{builder.Database}";
        }
        return $"SQLite file {new SqliteConnectionStringBuilder(ConnectionString).DataSource}";
    }

    public ClusterDbContext CreateDbContext() =>
        Provider == DatabaseProvider.Postgres
            ? new PostgresClusterDbContext(_postgres!)
            : new SqliteClusterDbContext(_sqlite!);

    /// <summary>Applies any pending migrations of the provider's migration set.</summary>
    public async Task MigrateAsync(CancellationToken cancellationToken)
    {
        if (Provider == DatabaseProvider.Sqlite)
        {
            string? file = new SqliteConnectionStringBuilder(ConnectionString).DataSource;
            string? folder = Path.GetDirectoryName(Path.GetFullPath(file));
            if (!string.IsNullOrEmpty(folder))
            {
                Directory.CreateDirectory(folder);
            }
        }
        await using ClusterDbContext db = CreateDbContext();
        await db.Database.MigrateAsync(cancellationToken);
    }
}
