using Cluster.Storage.Database.Entities;
using Microsoft.EntityFrameworkCore;

namespace Cluster.Storage.Database;

/// <summary>
/// The data model of DESIGN.md, shared by both providers. Each provider has its own subclass
/// (<see cref="PostgresClusterDbContext"/>, <see cref="SqliteClusterDbContext"/>) only so that each keeps
/// its own migrations; code everywhere else works with this type.
/// </summary>
public abstract class ClusterDbContext : DbContext
{
    protected ClusterDbContext(DbContextOptions options)
        : base(options)
    {
    }

    public DbSet<DatasetRecord> Datasets => Set<DatasetRecord>();
    public DbSet<FeatureSetRecord> FeatureSets => Set<FeatureSetRecord>();
    public DbSet<FeatureShardRecord> FeatureShards => Set<FeatureShardRecord>();
    public DbSet<SkippedImageRecord> SkippedImages => Set<SkippedImageRecord>();
    public DbSet<SweepRecord> Sweeps => Set<SweepRecord>();
    public DbSet<TrialRecord> Trials => Set<TrialRecord>();
    public DbSet<SegmentRecord> Segments => Set<SegmentRecord>();
    public DbSet<EpochMetricRecord> EpochMetrics => Set<EpochMetricRecord>();
    public DbSet<WorkerRecord> Workers => Set<WorkerRecord>();
    public DbSet<SelfTestRunRecord> SelfTestRuns => Set<SelfTestRunRecord>();

    protected override void ConfigureConventions(ModelConfigurationBuilder configurationBuilder)
    {
        // Enums as readable strings: the database is read by people and by other tools.
        configurationBuilder.Properties<FeatureSetStatus>().HaveConversion<string>().HaveMaxLength(32);
        configurationBuilder.Properties<SweepStatus>().HaveConversion<string>().HaveMaxLength(32);
        configurationBuilder.Properties<TrialStatus>().HaveConversion<string>().HaveMaxLength(32);
        configurationBuilder.Properties<SegmentStatus>().HaveConversion<string>().HaveMaxLength(32);
        configurationBuilder.Properties<WorkerStatus>().HaveConversion<string>().HaveMaxLength(32);
        configurationBuilder.Properties<FeatureShardStatus>().HaveConversion<string>().HaveMaxLength(32);
    }

    protected override void OnModelCreating(ModelBuilder modelBuilder)
    {
        modelBuilder.Entity<DatasetRecord>(e =>
        {
            e.ToTable("datasets");
            e.HasKey(x => x.Id);
        });

        modelBuilder.Entity<FeatureSetRecord>(e =>
        {
            e.ToTable("feature_sets");
            e.HasKey(x => x.Key);
            e.HasIndex(x => x.DatasetId);
            e.HasIndex(x => x.Status);
        });

        modelBuilder.Entity<FeatureShardRecord>(e =>
        {
            e.ToTable("feature_shards");
            e.HasKey(x => new { x.FeatureSetKey, x.Index });
        });

        modelBuilder.Entity<SkippedImageRecord>(e =>
        {
            e.ToTable("skipped_images");
            e.HasKey(x => x.Id);
            e.HasIndex(x => new { x.DatasetId, x.Path }).IsUnique();
        });

        modelBuilder.Entity<SweepRecord>(e =>
        {
            e.ToTable("sweeps");
            e.HasKey(x => x.Id);
            e.HasIndex(x => x.Status);
            e.HasIndex(x => x.CreatedAt);
        });

        modelBuilder.Entity<TrialRecord>(e =>
        {
            e.ToTable("trials");
            e.HasKey(x => x.Id);
            // The CLI's queries are per sweep (and per status within it): never a scan of every trial.
            e.HasIndex(x => new { x.SweepId, x.Status });
            // The scheduler finds a trial by its number in the sweep on every search operation.
            e.HasIndex(x => new { x.SweepId, x.Number }).IsUnique();
            e.HasIndex(x => x.PrefixKey);
        });

        modelBuilder.Entity<SegmentRecord>(e =>
        {
            e.ToTable("segments");
            e.HasKey(x => new { x.TrialId, x.Index });
            e.HasIndex(x => x.Status);
        });

        modelBuilder.Entity<EpochMetricRecord>(e =>
        {
            e.ToTable("epoch_metrics");
            e.HasKey(x => x.Id);
            e.Property(x => x.Split).HasMaxLength(32);
            e.HasIndex(x => new { x.TrialId, x.Epoch, x.Split }).IsUnique();
        });

        modelBuilder.Entity<WorkerRecord>(e =>
        {
            e.ToTable("workers");
            e.HasKey(x => x.Id);
            e.HasIndex(x => x.LastHeartbeat);
        });

        modelBuilder.Entity<SelfTestRunRecord>(e =>
        {
            e.ToTable("selftest_runs");
            e.HasKey(x => x.JobId);
        });
    }
}
