using Cluster.Contracts.Workers;
using Cluster.Coordinator.Orchestration;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using MassTransit;
using MassTransit.Testing;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Shouldly;

namespace Cluster.Coordinator.Tests;

/// <summary>The worker registry over the in-memory test harness and a real SQLite file (one per test).</summary>
public sealed class WorkerRegistryConsumerTests : IAsyncLifetime
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), "registry-tests-" + Guid.NewGuid().ToString("N"));
    private ClusterDbContextFactory _database = null!;
    private ServiceProvider _provider = null!;
    private ITestHarness _harness = null!;

    public async Task InitializeAsync()
    {
        Directory.CreateDirectory(_folder);
        _database = new ClusterDbContextFactory(DatabaseProvider.Sqlite, $"Data Source={Path.Combine(_folder, "test.db")}");
        await _database.MigrateAsync(CancellationToken.None);
        _provider = new ServiceCollection()
            .AddSingleton<IDbContextFactory<ClusterDbContext>>(_database)
            .AddMassTransitTestHarness(x => x.AddConsumer<WorkerRegistryConsumer>())
            // The defaults (30 s, 6 s of inactivity) are tight on a loaded 2-core CI machine.
            .Configure<TestHarnessOptions>(o =>
            {
                o.TestTimeout = TimeSpan.FromMinutes(3);
                o.TestInactivityTimeout = TimeSpan.FromMinutes(1);
            })
            .BuildServiceProvider(true);
        _harness = _provider.GetRequiredService<ITestHarness>();
        await _harness.Start();
    }

    public async Task DisposeAsync()
    {
        await _harness.Stop();
        await _provider.DisposeAsync();
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        Directory.Delete(_folder, recursive: true);
    }

    private async Task<WorkerRecord?> Worker(string id)
    {
        await using ClusterDbContext db = _database.CreateDbContext();
        return await db.Workers.AsNoTracking().SingleOrDefaultAsync(w => w.Id == id);
    }

    private async Task PublishAndConsume<T>(T message)
        where T : class
    {
        await _harness.Bus.Publish(message);
        // By value as JSON: the bus hands the consumer a deserialized copy, and a record's Equals compares its lists
        // (a heartbeat's resident feature sets) by reference.
        string sent = System.Text.Json.JsonSerializer.Serialize(message);
        (await _harness.Consumed.Any<T>(x => ReferenceEquals(x.Context.Message, message) || System.Text.Json.JsonSerializer.Serialize(x.Context.Message) == sent)).ShouldBeTrue();
    }

    [Fact]
    public async Task A_heartbeat_registers_an_unknown_worker_with_its_current_job()
    {
        DateTime now = DateTime.UtcNow;
        await PublishAndConsume(new WorkerHeartbeat { WorkerId = "w1", Host = "h", Device = "cuda:0", Version = "1.0", SentAt = now, CurrentJob = "selftest/x", ImagesPerSecond = 120, ResidentBytes = 812L << 20 });

        WorkerRecord? worker = await Worker("w1");
        worker.ShouldNotBeNull();
        worker.Status.ShouldBe(WorkerStatus.Alive);
        worker.Device.ShouldBe("cuda:0");
        worker.CurrentJob.ShouldBe("selftest/x");
        worker.ImagesPerSecond.ShouldBe(120);
        worker.ResidentBytes.ShouldBe(812L << 20);
    }

    [Fact]
    public async Task An_older_heartbeat_arriving_late_changes_nothing()
    {
        DateTime now = DateTime.UtcNow;
        await PublishAndConsume(new WorkerHeartbeat { WorkerId = "w2", Host = "h", Device = "cpu", Version = "1", SentAt = now, CurrentJob = "new" });
        await PublishAndConsume(new WorkerHeartbeat { WorkerId = "w2", Host = "h", Device = "cpu", Version = "1", SentAt = now.AddSeconds(-10), CurrentJob = "old" });

        (await Worker("w2"))!.CurrentJob.ShouldBe("new");
    }

    [Fact]
    public async Task A_stopping_worker_is_marked_stopped_and_later_heartbeats_do_not_revive_it()
    {
        DateTime now = DateTime.UtcNow;
        await PublishAndConsume(new WorkerStarted { WorkerId = "w3", Host = "h", Device = "cpu", Version = "1", StartedAt = now });
        await PublishAndConsume(new WorkerStopping { WorkerId = "w3", StoppedAt = now.AddSeconds(1), InterruptedJob = "selftest/y" });
        await PublishAndConsume(new WorkerHeartbeat { WorkerId = "w3", Host = "h", Device = "cpu", Version = "1", SentAt = now.AddSeconds(2) });

        WorkerRecord? worker = await Worker("w3");
        worker!.Status.ShouldBe(WorkerStatus.Stopped);
        worker.CurrentJob.ShouldBeNull();
    }
}
