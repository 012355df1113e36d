using System.Text.Json;
using Cluster.IntegrationTests.Support;
using Cluster.Storage.Database.Entities;
using Shouldly;

namespace Cluster.IntegrationTests;

public sealed class WorkersCommandTests : IAsyncLifetime
{
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(3);
    private IsolatedCluster _cluster = null!;

    public async Task InitializeAsync() => _cluster = await IsolatedCluster.CreateAsync();

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    [Fact]
    public async Task Serve_records_worker_heartbeats_and_workers_lists_live_then_stopped_workers()
    {
        ClusterProcess serve = _cluster.Coordinator("serve", "--cluster");
        string workerId = "listed-" + _cluster.Name;
        ClusterProcess worker = _cluster.Worker("--device", "cpu", "--id", workerId);

        // The heartbeat carries the worker's kernel check once its start-up canary has run.
        await Eventually.WaitAsync(async () => (await _cluster.RecordedWorkerAsync(workerId)) is { Status: WorkerStatus.Alive, ResidentBytes: > 0, KernelCheck: string check }
            && check.StartsWith($"{GpuWorker.Kernels.KernelCanary.Configs(1).Count} convolution", StringComparison.Ordinal),
            s_deadline, "the worker's heartbeat, with its whole start-up kernel check, to be recorded");
        JsonElement listed = (await _cluster.ListedWorkerAsync(workerId, s_deadline, all: false)).ShouldNotBeNull("listed among the live workers");
        listed.GetProperty("status").GetString().ShouldBe("alive");
        listed.GetProperty("device").GetString().ShouldBe("cpu");
        // A worker process with libtorch loaded is tens of MiB at the very least, and a 64-bit process far below a TiB.
        listed.GetProperty("residentMiB").GetInt64().ShouldBeInRange(20, 1L << 20);
        string kernels = listed.GetProperty("kernelCheck").GetString()!;
        kernels.ShouldContain("convolution configuration(s) checked on");
        kernels.ShouldMatch(@"^\d+ convolution configuration\(s\) checked on .+, libtorch 2\.10[0-9.]*: (all native kernels right|\d+ rerouted .+)$");

        worker.Terminate();
        (await worker.WaitForExitAsync(s_deadline)).ShouldBe(0, worker.Describe());
        await Eventually.WaitAsync(async () => (await _cluster.RecordedWorkerAsync(workerId))?.Status == WorkerStatus.Stopped, s_deadline, "the worker to be recorded as stopped");
        (await _cluster.ListedWorkerAsync(workerId, s_deadline)).ShouldNotBeNull().GetProperty("status").GetString().ShouldBe("stopped");
        (await _cluster.ListedWorkerAsync(workerId, s_deadline, all: false)).ShouldBeNull("a stopped worker is listed with --all only");
        serve.Terminate();
        (await serve.WaitForExitAsync(s_deadline)).ShouldBe(0, serve.Describe());
    }
}
