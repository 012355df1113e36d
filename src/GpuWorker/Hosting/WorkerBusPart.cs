using Cluster.Contracts;
using Cluster.GpuWorker.Extraction;
using Cluster.GpuWorker.SelfTest;
using Cluster.Hosting;
using MassTransit;
using Microsoft.Extensions.DependencyInjection;

namespace Cluster.GpuWorker.Hosting;

/// <summary>
/// The worker's side of the bus: one durable queue for every kind of job, consumed one job at a time.
/// All job types share the endpoint (rather than one queue per type) so that a worker never runs two jobs
/// at once on its device, whatever their kinds. Over RabbitMQ the worker also has its own queue, of the segments
/// whose features it holds in memory (<see cref="Training.DirectedSegmentConsumer"/>); <see cref="JobLanes"/> keeps
/// the two queues to one job at a time.
/// </summary>
public sealed class WorkerBusPart(int concurrentJobs = 1) : IClusterBusPart
{
    public void Register(IBusRegistrationConfigurator bus)
    {
        bus.AddConsumer<RunSelfTestConsumer>();
        bus.AddConsumer<ExtractFeaturesConsumer>();
        bus.AddConsumer<Training.TrainSegmentConsumer>();
        bus.AddConsumer<Training.DirectedSegmentConsumer>();
    }

    public void ConfigureEndpoints(IBusRegistrationContext context, IBusFactoryConfigurator bus)
    {
        var lanes = context.GetRequiredService<JobLanes>();
        bus.ReceiveEndpoint(QueueNames.GpuWork, e =>
        {
            // Prefetch 1: a job waiting in one worker's buffer is a job another idle worker cannot take.
            e.PrefetchCount = concurrentJobs;
            e.ConcurrentMessageLimit = concurrentJobs;
            // Commands are sent to the queue, never published: no exchange bindings per message type.
            e.ConfigureConsumeTopology = false;
            if (e is IRabbitMqReceiveEndpointConfigurator quorum)
            {
                JobQueues.ConfigureSharedQueue(quorum);
            }
            e.UseFilter(new TakeLaneFilter(lanes));
            UseJobRetry(e);
            e.UseConsumeFilter(typeof(ContractVersionFilter<>), context);
            e.ConfigureConsumer<RunSelfTestConsumer>(context);
            e.ConfigureConsumer<ExtractFeaturesConsumer>(context);
            e.ConfigureConsumer<Training.TrainSegmentConsumer>(context);
        });
        if (bus is IRabbitMqBusFactoryConfigurator rabbit && context.GetRequiredService<WorkerIdentity>().DirectQueue is string direct)
        {
            rabbit.ReceiveEndpoint(direct, e =>
            {
                e.PrefetchCount = 1;
                e.ConcurrentMessageLimit = 1;
                e.ConfigureConsumeTopology = false;
                // What this worker does not take within the wait (it died, stopped, or lost its connection) is dead-lettered
                // to the shared queue's exchange, so no segment waits on a worker that will not come; a worker gone for
                // long has its queue deleted by the broker. Both are fixed: a redeclaration with other values would fail.
                e.SetQueueArgument("x-message-ttl", (int)QueueNames.DirectedWait.TotalMilliseconds);
                e.SetQueueArgument("x-dead-letter-exchange", QueueNames.GpuWork);
                e.SetQueueArgument("x-expires", (int)TimeSpan.FromMinutes(30).TotalMilliseconds);
                // A message sent to this queue's exchange after the broker deleted the queue goes to the shared queue too.
                e.SetExchangeArgument("alternate-exchange", QueueNames.GpuWork);
                e.ConfigureConsumer<Training.DirectedSegmentConsumer>(context);
            });
        }
    }

    /// <summary>
    /// A job records its own failures (the trial or shard is failed with the reason), so what reaches the bus is a failure to
    /// record even that: the database or the storage down for a moment. Tried again with backoff (about a minute in all,
    /// holding the worker's lane: nothing else could be recorded either), then MassTransit moves the job to the error queue,
    /// where the coordinator fails its trial or shard (<see cref="QueueNames.GpuWorkError"/>). A shutdown is not a failure:
    /// its job goes back to the queue unacknowledged, never to the error queue.
    /// </summary>
    private static void UseJobRetry(IReceiveEndpointConfigurator endpoint) =>
        endpoint.UseMessageRetry(r =>
        {
            r.Ignore<OperationCanceledException>();
            // The same job would be refused again: to the error queue at once.
            r.Ignore<UnknownContractVersionException>();
            r.Exponential(5, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(30), TimeSpan.FromSeconds(3));
        });
}
