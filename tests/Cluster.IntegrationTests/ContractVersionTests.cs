using System.Text.Json;
using Cluster.Contracts;
using Cluster.Contracts.SelfTest;
using Cluster.IntegrationTests.Support;
using Shouldly;

namespace Cluster.IntegrationTests;

/// <summary>
/// A job of a contract version the worker does not read (a newer coordinator mid-upgrade, or a message not from ours) is
/// refused, not guessed at: it reaches the error queue at once with a reason naming the version, and the worker goes on
/// with the next job.
/// </summary>
public sealed class ContractVersionTests : IAsyncLifetime
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
    public async Task A_job_of_an_unknown_contract_version_goes_to_the_error_queue_with_its_reason_and_the_worker_goes_on()
    {
        string workerId = "worker-" + _cluster.Name;
        ClusterProcess worker = _cluster.Worker("--device", "cpu", "--id", workerId);
        await Eventually.WaitAsync(async () => (await _cluster.QueueAsync(QueueNames.GpuWork))?.Consumers == 1,
            s_deadline, () => "the worker to consume the gpu-work queue\n" + worker.Describe());

        // As a coordinator of a later release would send it.
        var refused = new RunSelfTest { JobId = Guid.NewGuid(), Version = ContractVersion.Current + 98 };
        await _cluster.SendJobsAsync(refused);

        await Eventually.WaitAsync(async () => (await _cluster.QueueAsync(QueueNames.GpuWorkError))?.Ready == 1,
            s_deadline, () => "the refused job to reach the error queue\n" + worker.Describe());
        (int code, ClusterProcess errors) = await _cluster.RunCoordinatorAsync(s_deadline, "errors", "--cluster", "--format", "json");
        code.ShouldBe(0, errors.Describe());
        using (JsonDocument listed = JsonDocument.Parse(errors.StandardOutput))
        {
            JsonElement job = listed.RootElement.EnumerateArray().ShouldHaveSingleItem();
            job.GetProperty("kind").GetString().ShouldBe("selftest");
            job.GetProperty("job").GetString().ShouldNotBeNull().ShouldContain(refused.JobId.ToString());
            string reason = job.GetProperty("reason").GetString().ShouldNotBeNull();
            reason.ShouldContain($"RunSelfTest of contract version {refused.Version} cannot be read by this worker, which reads version {ContractVersion.Current}",
                customMessage: worker.Describe());
            // Refused once, not retried: the same job would be refused again.
            reason.ShouldNotContain("given up after");
        }

        // The worker goes on: the next job, of the current version, runs on it.
        (code, ClusterProcess selftest) = await _cluster.RunCoordinatorAsync(s_deadline, "selftest", "--cluster", "--format", "json");
        code.ShouldBe(0, _cluster.DescribeProcesses());
        using JsonDocument result = JsonDocument.Parse(selftest.StandardOutput);
        result.RootElement.GetProperty("passed").GetBoolean().ShouldBeTrue();
        result.RootElement.GetProperty("workerId").GetString().ShouldBe(workerId);
    }
}
