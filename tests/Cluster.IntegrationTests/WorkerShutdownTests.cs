using Cluster.Contracts;
using Cluster.IntegrationTests.Support;
using Cluster.Storage.Database.Entities;
using Microsoft.EntityFrameworkCore;
using Shouldly;

namespace Cluster.IntegrationTests;

public sealed class WorkerShutdownTests : IAsyncLifetime
{
    // Generous: on a loaded 2-core CI machine the job itself can take minutes.
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(8);
    private IsolatedCluster _cluster = null!;

    public async Task InitializeAsync()
    {
        _cluster = await IsolatedCluster.CreateAsync();
        await _cluster.MigrateAsync(s_deadline);
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    [Fact]
    public async Task A_worker_stopped_by_sigterm_mid_job_leaves_it_to_another_worker_and_it_is_recorded_once()
    {
        ClusterProcess first = _cluster.Worker("--device", "cpu", "--id", "first-" + _cluster.Name);
        // Long enough (about ten seconds on one idle thread) that SIGTERM, sent as soon as the broker shows the job
        // taken, surely lands mid-job.
        ClusterProcess selftest = _cluster.Coordinator("selftest", "--cluster", "--format", "json", "--timeout", "600", "--size", "128", "--layers", "3000");
        await Eventually.WaitAsync(
            async () => (await _cluster.QueueAsync(QueueNames.GpuWork))?.Unacknowledged == 1,
            s_deadline, "the first worker to take the job");

        first.Terminate();

        (await first.WaitForExitAsync(s_deadline)).ShouldBe(0, first.Describe());
        await using (var db = _cluster.Database())
        {
            (await db.SelfTestRuns.CountAsync()).ShouldBe(0, "the interrupted job must not be recorded");
        }
        // The management API's counts lag the broker by its statistics interval: wait for them to settle.
        await Eventually.WaitAsync(
            async () => await _cluster.QueueAsync(QueueNames.GpuWork) is { Ready: 1, Unacknowledged: 0 },
            s_deadline, "the unfinished job to be back in the queue, ready for another worker");
        (await _cluster.QueueAsync(QueueNames.GpuWork + "_error"))?.Ready.ShouldBe(0, "an interrupted job is not an error");

        string secondId = "second-" + _cluster.Name;
        _cluster.Worker("--device", "cpu", "--id", secondId);

        (await selftest.WaitForExitAsync(s_deadline)).ShouldBe(0, _cluster.DescribeProcesses());
        await using (var db = _cluster.Database())
        {
            SelfTestRunRecord row = await db.SelfTestRuns.AsNoTracking().SingleAsync();
            row.WorkerId.ShouldBe(secondId);
        }
    }
}
