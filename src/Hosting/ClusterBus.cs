using MassTransit;
using Microsoft.Extensions.DependencyInjection;

namespace Cluster.Hosting;

/// <summary>
/// One part of a process's bus: the consumers it registers and the receive endpoints it configures.
/// A worker process has the worker part, `coordinator serve` the coordinator part, an embedded run both,
/// all on one bus, so that the same code runs over RabbitMQ and over the in-memory transport.
/// </summary>
public interface IClusterBusPart
{
    void Register(IBusRegistrationConfigurator bus);

    void ConfigureEndpoints(IBusRegistrationContext context, IBusFactoryConfigurator bus);
}

public static class ClusterBus
{
    /// <summary>Adds MassTransit over RabbitMQ (cluster) or the in-memory transport (embedded) with the given parts.</summary>
    public static IServiceCollection AddClusterBus(
        this IServiceCollection services, ClusterRuntimeSettings settings, params IClusterBusPart[] parts)
    {
        services.AddMassTransit(x =>
        {
            // MassTransit 8.4+ posts anonymous usage data to its vendor a while after start: a cluster's machines may
            // reach no outside network (each attempt then logs a warning with a stack trace), and nothing of a user's
            // should leave without asking.
            x.ConfigureUsageTelemetryOptions(o => o.Enabled = false);
            foreach (IClusterBusPart part in parts)
            {
                part.Register(x);
            }
            if (settings.Mode == RuntimeMode.Cluster)
            {
                RabbitMqOptions rabbit = settings.RabbitMq;
                x.UsingRabbitMq((context, cfg) =>
                {
                    cfg.Host(rabbit.Host, (ushort)rabbit.Port, rabbit.VirtualHost, "cluster", h =>
                    {
                        h.Username(rabbit.Username);
                        h.Password(rabbit.Password);
                        h.RequestedConnectionTimeout(TimeSpan.FromSeconds(10));
                        h.Heartbeat((ushort)rabbit.HeartbeatSeconds);
                        BrokerTls.Configure(h, rabbit);
                    });
                    cfg.SendTopology.ConfigureErrorSettings = JobQueues.PlainFailureQueue;
                    cfg.SendTopology.ConfigureDeadLetterSettings = JobQueues.PlainFailureQueue;
                    foreach (IClusterBusPart part in parts)
                    {
                        part.ConfigureEndpoints(context, cfg);
                    }
                });
            }
            else
            {
                x.UsingInMemory((context, cfg) =>
                {
                    foreach (IClusterBusPart part in parts)
                    {
                        part.ConfigureEndpoints(context, cfg);
                    }
                });
            }
        });
        services.AddOptions<MassTransitHostOptions>().Configure(o =>
        {
            // Start and stop with the host; a job still running at shutdown gets its cancellation token
            // signalled after this grace period, and its message goes back to the queue unacknowledged.
            o.WaitUntilStarted = true;
            o.StartTimeout = TimeSpan.FromSeconds(60);
            o.StopTimeout = TimeSpan.FromSeconds(30);
            o.ConsumerStopTimeout = TimeSpan.FromSeconds(2);
        });
        return services;
    }

    /// <summary>Where jobs for GPU workers are sent: the exchange of their shared queue (see <see cref="JobQueues"/>, which
    /// says why not the queue itself). The in-memory transport treats it as the same queue.</summary>
    public static Uri GpuWorkQueue => JobQueues.SharedExchange;
}
