using Cluster.Contracts;
using Cluster.Contracts.Training;
using MassTransit;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Cluster.Coordinator.Orchestration;

/// <summary>
/// Once the coordinator service has started, it asks itself (on its own queue, so the scheduler handles it in turn
/// with every other event) to send again what its running sweeps had dispatched: a coordinator killed between saving
/// a decision and sending its segment loses nothing.
/// </summary>
public sealed class SweepRecoveryOnStart(IBus bus, IHostApplicationLifetime lifetime, ILogger<SweepRecoveryOnStart> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        lifetime.ApplicationStarted.Register(() => _ = SendAsync());
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private async Task SendAsync()
    {
        try
        {
            ISendEndpoint coordinator = await bus.GetSendEndpoint(new Uri($"queue:{QueueNames.Coordinator}"));
            await coordinator.Send(new RecoverSweeps { StartedAt = DateTime.UtcNow }, lifetime.ApplicationStopping);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            logger.LogError(e, "Could not ask the scheduler to recover running sweeps; `coordinator sweep resume ID` continues one");
        }
    }
}
