using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Design;

namespace Cluster.Storage.Database;

// Used only by `dotnet ef migrations add`; the connection strings are never opened.

internal sealed class PostgresDesignTimeFactory : IDesignTimeDbContextFactory<PostgresClusterDbContext>
{
    public PostgresClusterDbContext CreateDbContext(string[] args) =>
        (PostgresClusterDbContext)new ClusterDbContextFactory(DatabaseProvider.Postgres, "Host=localhost;Database=design_time").CreateDbContext();
}

internal sealed class SqliteDesignTimeFactory : IDesignTimeDbContextFactory<SqliteClusterDbContext>
{
    public SqliteClusterDbContext CreateDbContext(string[] args) =>
        (SqliteClusterDbContext)new ClusterDbContextFactory(DatabaseProvider.Sqlite, "Data Source=design_time.db").CreateDbContext();
}
