using System.Text.Json;
using Cluster.Contracts;
using Cluster.IntegrationTests.Support;
using Cluster.Storage.Database.Entities;
using Microsoft.EntityFrameworkCore;
using Shouldly;

namespace Cluster.IntegrationTests;

/// <summary>The foundation's promise: a job travels coordinator → RabbitMQ → worker process → PostgreSQL.</summary>
public sealed class SelfTestRoundTripTests : IAsyncLifetime
{
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(3);
    private IsolatedCluster _cluster = null!;

    public async Task InitializeAsync()
    {
        _cluster = await IsolatedCluster.CreateAsync();
        await _cluster.MigrateAsync(s_deadline);
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    [Fact]
    public async Task A_worker_process_consumes_the_job_from_rabbitmq_and_records_its_result_in_postgres()
    {
        string workerId = "worker-" + _cluster.Name;
        _cluster.Worker("--device", "cpu", "--id", workerId);

        (int code, ClusterProcess selftest) = await _cluster.RunCoordinatorAsync(s_deadline, "selftest", "--cluster", "--format", "json");

        code.ShouldBe(0, _cluster.DescribeProcesses());
        using JsonDocument result = JsonDocument.Parse(selftest.StandardOutput);
        result.RootElement.GetProperty("passed").GetBoolean().ShouldBeTrue();
        result.RootElement.GetProperty("mode").GetString().ShouldBe("cluster");
        result.RootElement.GetProperty("workerId").GetString().ShouldBe(workerId);
        // The worker's verdict on its kernels: the canary configurations and the self-test's own, all checked.
        result.RootElement.GetProperty("kernelCheck").GetString()!.ShouldMatch(@"^\d+ convolution configuration\(s\) checked on .+, libtorch ");
        Guid jobId = result.RootElement.GetProperty("jobId").GetGuid();

        await using var db = _cluster.Database();
        SelfTestRunRecord row = await db.SelfTestRuns.AsNoTracking().SingleAsync();
        row.JobId.ShouldBe(jobId);
        row.WorkerId.ShouldBe(workerId);
        row.Device.ShouldBe("cpu");
        row.OutputShape.ShouldBe("1x16x32x32");
        row.Checksum.ShouldBe(result.RootElement.GetProperty("expectedChecksum").GetDouble(), 1e-3);
    }

    [Fact]
    public async Task A_job_sent_while_no_worker_runs_waits_in_the_durable_queue_until_one_starts()
    {
        ClusterProcess selftest = _cluster.Coordinator("selftest", "--cluster", "--format", "json", "--timeout", "300");
        await Eventually.WaitAsync(
            async () => (await _cluster.QueueAsync(QueueNames.GpuWork))?.Ready == 1,
            s_deadline, "the self-test job to wait in the gpu-work queue");

        string workerId = "late-worker-" + _cluster.Name;
        _cluster.Worker("--device", "cpu", "--id", workerId);

        (await selftest.WaitForExitAsync(s_deadline)).ShouldBe(0, _cluster.DescribeProcesses());
        using JsonDocument result = JsonDocument.Parse(selftest.StandardOutput);
        result.RootElement.GetProperty("workerId").GetString().ShouldBe(workerId);
        await Eventually.WaitAsync(
            async () => await _cluster.QueueAsync(QueueNames.GpuWork) is { Ready: 0, Unacknowledged: 0 },
            s_deadline, "the gpu-work queue to be empty");
    }
}
