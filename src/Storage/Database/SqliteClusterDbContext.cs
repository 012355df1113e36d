using Microsoft.EntityFrameworkCore;

namespace Cluster.Storage.Database;

/// <summary>The embedded database: one SQLite file, with its own migrations (Database/Migrations/Sqlite).</summary>
public sealed class SqliteClusterDbContext : ClusterDbContext
{
    public SqliteClusterDbContext(DbContextOptions<SqliteClusterDbContext> options)
        : base(options)
    {
    }
}
