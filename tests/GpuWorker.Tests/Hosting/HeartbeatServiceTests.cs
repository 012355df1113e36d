using Cluster.Contracts.Workers;
using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Hosting;
using Cluster.GpuWorker.Kernels;
using MassTransit;
using MassTransit.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Shouldly;

namespace Cluster.GpuWorker.Tests.Hosting;

/// <summary>
/// A heartbeat whose publish never returns (caught in flight when the broker froze: it waits for a confirm that does not
/// come, rabbitmq-dotnet-client#1930) must not stop the heartbeats after it, or a live worker is shown lost for good.
/// </summary>
public sealed class HeartbeatServiceTests
{
    [Fact]
    public async Task A_heartbeat_publish_that_never_returns_is_given_up_after_its_time_to_live_and_the_next_heartbeat_is_sent()
    {
        var hang = new HangFirstHeartbeat();
        var logs = new LogLines();
        await using ServiceProvider provider = new ServiceCollection()
            .AddLogging(l => l.AddProvider(logs))
            .AddMassTransitTestHarness(x => x.UsingInMemory((context, cfg) =>
            {
                cfg.ConfigurePublish(p => p.UseFilter(hang));
                cfg.ConfigureEndpoints(context);
            }))
            .Configure<TestHarnessOptions>(o =>
            {
                o.TestTimeout = TimeSpan.FromMinutes(3);
                o.TestInactivityTimeout = TimeSpan.FromMinutes(1);
            })
            .BuildServiceProvider(true);
        ITestHarness harness = provider.GetRequiredService<ITestHarness>();
        await harness.Start();
        TimeSpan interval = TimeSpan.FromMilliseconds(200);
        var heartbeats = new HeartbeatService(harness.Bus, WorkerIdentity.Create("frozen-broker-worker", TorchDevice.Cpu, directQueue: false),
            new JobTracker(), new LaneLayout(1, 1), new KernelVerifier(), interval, provider.GetRequiredService<ILogger<HeartbeatService>>());
        await heartbeats.StartAsync(CancellationToken.None);
        try
        {
            await hang.FirstHeld.WaitAsync(TimeSpan.FromMinutes(1));
            // Without the bound, the loop waits on the held publish for ever and this times out.
            await hang.NextPassed.WaitAsync(TimeSpan.FromMinutes(1));

            (await harness.Published.Any<WorkerHeartbeat>(m => m.Context.Message.WorkerId == "frozen-broker-worker")).ShouldBeTrue();
            (await harness.Published.Any<WorkerStarted>()).ShouldBeTrue("the start announcement went before the held heartbeat");
            logs.Lines.ShouldContain(l => l.Contains("heartbeat of worker frozen-broker-worker was not sent within", StringComparison.Ordinal));
        }
        finally
        {
            hang.Release();
            await heartbeats.StopAsync(CancellationToken.None);
            await harness.Stop();
        }
    }

    /// <summary>Holds the first heartbeat's publish, ignoring its cancellation as the broken client does, until released.</summary>
    private sealed class HangFirstHeartbeat : IFilter<PublishContext>
    {
        private readonly TaskCompletionSource _released = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource _firstHeld = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource _nextPassed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _heartbeats;

        public Task FirstHeld => _firstHeld.Task;

        public Task NextPassed => _nextPassed.Task;

        public void Release() => _released.TrySetResult();

        public async Task Send(PublishContext context, IPipe<PublishContext> next)
        {
            if (context is PublishContext<WorkerHeartbeat>)
            {
                if (Interlocked.Increment(ref _heartbeats) == 1)
                {
                    _firstHeld.TrySetResult();
                    await _released.Task;
                }
                else
                {
                    _nextPassed.TrySetResult();
                }
            }
            await next.Send(context);
        }

        public void Probe(ProbeContext context) => context.CreateFilterScope("hang-first-heartbeat");
    }
}
