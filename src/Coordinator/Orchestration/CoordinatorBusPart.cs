using Cluster.Contracts;
using Cluster.Hosting;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;

namespace Cluster.Coordinator.Orchestration;

/// <summary>The coordinator service's side of the bus: one queue for the events workers publish.</summary>
public sealed class CoordinatorBusPart : IClusterBusPart
{
    public void Register(IBusRegistrationConfigurator bus)
    {
        // One per service: which worker holds which feature sets, from heartbeats and outcomes (see SegmentPlacement).
        bus.TryAddSingleton(sp => new SegmentPlacement(
            enabled: sp.GetService<IConfiguration>()?.GetValue(SegmentPlacement.SettingKey, true) ?? true));
        bus.AddConsumer<WorkerRegistryConsumer>();
        bus.AddConsumer<TrialScheduler>();
        bus.AddConsumer<FeatureSetService>();
        bus.AddConsumer<DeadJobConsumer>();
    }

    public void ConfigureEndpoints(IBusRegistrationContext context, IBusFactoryConfigurator bus)
    {
        bus.ReceiveEndpoint(QueueNames.Coordinator, e =>
        {
            // One event at a time: the coordinator is the single writer of cluster state, and ordered,
            // sequential updates keep that state simple to reason about. A lost race on an insert retries.
            e.ConcurrentMessageLimit = 1;
            e.UseMessageRetry(r =>
            {
                r.Handle<DbUpdateException>();
                r.Intervals(100, 500, 2000);
            });
            e.ConfigureConsumer<WorkerRegistryConsumer>(context);
            e.ConfigureConsumer<TrialScheduler>(context);
            e.ConfigureConsumer<FeatureSetService>(context);
        });
        if (bus is IRabbitMqBusFactoryConfigurator rabbit)
        {
            // A copy of every dead job: the error queue itself keeps them for `coordinator errors` to list and requeue.
            rabbit.ReceiveEndpoint(QueueNames.DeadJobs, e =>
            {
                e.ConfigureConsumeTopology = false;
                e.Bind(QueueNames.GpuWorkError);
                ConfigureDeadJobs(context, e);
            });
        }
        else
        {
            // Embedded: nobody lists an in-memory error queue, so the coordinator consumes it.
            bus.ReceiveEndpoint(QueueNames.GpuWorkError, e => ConfigureDeadJobs(context, e));
        }
    }

    private static void ConfigureDeadJobs(IBusRegistrationContext context, IReceiveEndpointConfigurator e)
    {
        e.ConcurrentMessageLimit = 1;
        // Failing a trial or shard needs the database: a dead job waits for it rather than be lost.
        e.UseMessageRetry(r => r.Exponential(10, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(30), TimeSpan.FromSeconds(2)));
        e.ConfigureConsumer<DeadJobConsumer>(context);
    }
}
