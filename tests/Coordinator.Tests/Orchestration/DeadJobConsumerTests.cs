using System.Text;
using Cluster.Contracts.Features;
using Cluster.Coordinator.Orchestration;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using MassTransit;
using MassTransit.Testing;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Shouldly;

namespace Cluster.Coordinator.Tests.Orchestration;

/// <summary>Dead jobs over the in-memory test harness and a real SQLite file (one per test); the segment path runs end to end in the integration tests.</summary>
public sealed class DeadJobConsumerTests : IAsyncLifetime
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), "dead-job-tests-" + Guid.NewGuid().ToString("N"));
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
            .AddLogging()
            .AddMassTransitTestHarness(x => x.AddConsumer<DeadJobConsumer>())
            .Configure<TestHarnessOptions>(o =>
            {
                o.TestTimeout = TimeSpan.FromMinutes(3);
                // A consumer still running counts as activity: this is how long the check that nothing more was published waits.
                o.TestInactivityTimeout = TimeSpan.FromSeconds(10);
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

    private static ExtractFeatures TwoTapShard() => new()
    {
        FeatureSetKey = "set.a",
        ShardIndex = 3,
        DatasetId = "0123456789abcdef",
        RowStart = 300,
        RowCount = 100,
        Model = "resnet18",
        WeightsHash = "random:0",
        Layer = "avgpool",
        Pooling = "avg",
        Precision = "fp32",
        MoreTaps = [new ExtractionTap { FeatureSetKey = "set.b", Layer = "layer3", Pooling = "avg" }],
    };

    [Fact]
    public async Task A_dead_shard_fails_every_tap_not_complete_with_the_exception_the_worker_kept_throwing()
    {
        await using (ClusterDbContext db = _database.CreateDbContext())
        {
            // Another delivery finished set.b's shard before this copy died: it stays complete.
            db.FeatureShards.Add(new FeatureShardRecord { FeatureSetKey = "set.b", Index = 3, Path = "features/set.b/shard-3.safetensors", Sha256 = "ab", Status = FeatureShardStatus.Complete });
            await db.SaveChangesAsync();
        }
        ExtractFeatures job = TwoTapShard();

        await _harness.Bus.Publish(job, send =>
        {
            send.Headers.Set(DeadJobReason.FaultExceptionType, "System.IO.IOException");
            send.Headers.Set(DeadJobReason.FaultMessage, "No space left on device\n   at the writer");
            send.Headers.Set(DeadJobReason.FaultRetryCount, 5);
        });

        const string reason = "IOException: No space left on device at the writer (given up after 5 retries)";
        IPublishedMessage<FeatureShardFailed> failed = (await _harness.Published.SelectAsync<FeatureShardFailed>().First())!;
        (failed.Context.Message.FeatureSetKey, failed.Context.Message.ShardIndex, failed.Context.Message.Reason, failed.Context.Message.WorkerId)
            .ShouldBe(("set.a", 3, reason, DeadJobConsumer.FailedBy));
        (await _harness.Consumed.Any<ExtractFeatures>()).ShouldBeTrue();
        _harness.Published.Select<FeatureShardFailed>(m => m.Context.Message.FeatureSetKey == "set.b", CancellationToken.None).Any()
            .ShouldBeFalse("set.b's shard was complete");
        await using (ClusterDbContext db = _database.CreateDbContext())
        {
            List<FeatureShardRecord> rows = await db.FeatureShards.AsNoTracking().OrderBy(s => s.FeatureSetKey).ToListAsync();
            rows.Select(r => (r.FeatureSetKey, r.Index, r.Status, r.FailureReason)).ShouldBe(
            [
                ("set.a", 3, FeatureShardStatus.Failed, reason),
                ("set.b", 3, FeatureShardStatus.Complete, null),
            ]);
        }
    }

    [Fact]
    public void A_job_the_broker_dead_lettered_at_its_delivery_limit_says_so_whether_its_headers_are_bytes_or_text()
    {
        var amqp = new Dictionary<string, object?> { ["x-first-death-reason"] = Encoding.UTF8.GetBytes("delivery_limit"), ["x-delivery-count"] = 5L };
        string fromBytes = DeadJobReason.Describe(name => amqp.GetValueOrDefault(name), deliveryLimit: 5);
        fromBytes.ShouldStartWith("reached the delivery limit (5 deliveries)");

        var text = new Dictionary<string, object?> { ["x-first-death-reason"] = "delivery_limit" };
        DeadJobReason.Describe(name => text.GetValueOrDefault(name), deliveryLimit: 5).ShouldBe(fromBytes);

        var expired = new Dictionary<string, object?> { ["x-first-death-reason"] = Encoding.UTF8.GetBytes("expired") };
        DeadJobReason.Describe(name => expired.GetValueOrDefault(name), deliveryLimit: 5).ShouldBe("dead-lettered by the broker (expired)");
        DeadJobReason.Describe(_ => null, deliveryLimit: 5).ShouldBe("moved to the error queue without a recorded reason");
    }

    [Theory]
    [InlineData("MT-Fault-Message", true)]
    [InlineData("MT-Reason", true)]
    [InlineData("MT-Host-MachineName", true)]
    [InlineData("x-death", true)]
    [InlineData("x-first-death-queue", true)]
    [InlineData("x-delivery-count", true)]
    [InlineData("Cluster-Passed-On-By", false)]
    [InlineData("MT-Activity-Id", false)]
    public void A_requeue_takes_off_only_the_headers_a_failure_added(string header, bool isFailure) =>
        DeadJobReason.IsFailureHeader(header).ShouldBe(isFailure);
}
