using Cluster.Contracts;
using Cluster.GpuWorker.Extraction;
using Cluster.GpuWorker.SelfTest;
using Cluster.Hosting;
using MassTransit;

namespace Cluster.GpuWorker.Hosting;

/// <summary>
/// The worker's side of the bus: one durable queue for every kind of job, consumed one job at a time.
/// All job types share the endpoint (rather than one queue per type) so that a worker never runs two jobs
/// at once on its device, whatever their kinds.
/// </summary>
public sealed class WorkerBusPart(int concurrentJobs = 1) : IClusterBusPart
{
    public void Register(IBusRegistrationConfigurator bus)
    {
        bus.AddConsumer<RunSelfTestConsumer>();
        bus.AddConsumer<ExtractFeaturesConsumer>();
        bus.AddConsumer<Training.TrainSegmentConsumer>();
    }

    public void ConfigureEndpoints(IBusRegistrationContext context, IBusFactoryConfigurator bus)
    {
        bus.ReceiveEndpoint(QueueNames.GpuWork, e =>
        {
            // Prefetch 1: a job waiting in one worker's buffer is a job another idle worker cannot take.
            e.PrefetchCount = concurrentJobs;
            e.ConcurrentMessageLimit = concurrentJobs;
            // Commands are sent to the queue, never published: no exchange bindings per message type.
            e.ConfigureConsumeTopology = false;
            e.ConfigureConsumer<RunSelfTestConsumer>(context);
            e.ConfigureConsumer<ExtractFeaturesConsumer>(context);
            e.ConfigureConsumer<Training.TrainSegmentConsumer>(context);
        });
    }
}
