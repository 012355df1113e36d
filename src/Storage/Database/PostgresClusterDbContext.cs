using Cluster.Storage.Database.Entities;
using Microsoft.EntityFrameworkCore;

namespace Cluster.Storage.Database;

/// <summary>The cluster's database: PostgreSQL, with its own migrations (Database/Migrations/Postgres).</summary>
public sealed class PostgresClusterDbContext : ClusterDbContext
{
    public PostgresClusterDbContext(DbContextOptions<PostgresClusterDbContext> options)
        : base(options)
    {
    }

    protected override void OnModelCreating(ModelBuilder modelBuilder)
    {
        base.OnModelCreating(modelBuilder);
        modelBuilder.Entity<TrialRecord>().Property(x => x.Hyperparameters).HasColumnType("jsonb");
    }
}
