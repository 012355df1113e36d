using Cluster.Contracts;
using MassTransit;
using RabbitMQ.Client;
using RabbitMQ.Client.Exceptions;

namespace Cluster.Hosting;

/// <summary>
/// The broker objects the job queue is made of, declared the same way by everyone who touches them. The shared queue is a
/// quorum queue (replicated, and it counts deliveries): a job whose every taker dies (kill -9, out of memory, a segfault in
/// a kernel) is redelivered at most <see cref="DeliveryLimit"/> times and then dead-lettered to <see cref="QueueNames.GpuWorkError"/>,
/// instead of killing workers for ever. RabbitMQ refuses to redeclare a queue with other arguments, and MassTransit's
/// <c>queue:</c> send addresses declare a classic one, so senders use <see cref="SharedExchange"/> and the queue itself is
/// declared here, before any bus starts, by every process (<see cref="DeclareAsync"/>): a job sent before the first worker
/// ever started waits in it.
/// </summary>
public static class JobQueues
{
    /// <summary>Deliveries of one job the shared queue allows (each worker that took it and died counts one).</summary>
    public const int DeliveryLimit = 5;

    /// <summary>Where every sender sends jobs: the shared queue's exchange (fanout, bound to the queue).</summary>
    public static Uri SharedExchange => new($"exchange:{QueueNames.GpuWork}");

    /// <summary>The shared queue's arguments besides its type: what the worker's endpoint and <see cref="DeclareAsync"/> both set.
    /// Ints, as RabbitMQ compares the argument's type too.</summary>
    private static readonly (string Name, object Value)[] s_sharedQueueArguments =
    [
        ("x-delivery-limit", DeliveryLimit),
        ("x-dead-letter-exchange", QueueNames.GpuWorkError),
    ];

    /// <summary>The worker's receive endpoint on the shared queue: the same queue <see cref="DeclareAsync"/> declares.</summary>
    public static void ConfigureSharedQueue(IRabbitMqReceiveEndpointConfigurator endpoint)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        endpoint.SetQuorumQueue();
        foreach ((string name, object value) in s_sharedQueueArguments)
        {
            endpoint.SetQueueArgument(name, value);
        }
    }

    /// <summary>
    /// MassTransit declares an endpoint's error (and skipped) queue with the endpoint queue's own arguments: the shared queue's
    /// error queue would be a quorum queue with a delivery limit dead-lettering to itself, which <see cref="DeclareAsync"/>
    /// declared plain, and RabbitMQ refuses the second declaration, closing the channel, so a failed job never reached it
    /// (it was redelivered until the delivery limit, its reason lost). A failure queue holds what failed until someone looks:
    /// no queue type, limit, expiry or dead-lettering of its own.
    /// </summary>
    public static void PlainFailureQueue(IRabbitMqQueueBindingConfigurator queue)
    {
        ArgumentNullException.ThrowIfNull(queue);
        foreach (string argument in s_notOnFailureQueues)
        {
            // MassTransit removes an argument set to null.
            queue.SetQueueArgument(argument, null);
        }
    }

    private static readonly string[] s_notOnFailureQueues =
        ["x-queue-type", "x-delivery-limit", "x-dead-letter-exchange", "x-message-ttl", "x-expires"];

    /// <summary>
    /// Declares the shared exchange and quorum queue, and the error exchange and queue (classic, as MassTransit declares its
    /// error queues), on an open connection. Idempotent. A queue left by an older version with other arguments is a
    /// configuration problem: <see cref="ClusterConfigurationException"/> with what to do.
    /// </summary>
    public static async Task DeclareAsync(IConnection connection, string virtualHost, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(connection);
        var arguments = new Dictionary<string, object?> { ["x-queue-type"] = "quorum" };
        foreach ((string name, object value) in s_sharedQueueArguments)
        {
            arguments[name] = value;
        }
        await DeclareQueueAsync(connection, virtualHost, QueueNames.GpuWork, arguments, cancellationToken);
        await DeclareQueueAsync(connection, virtualHost, QueueNames.GpuWorkError, null, cancellationToken);
    }

    private static async Task DeclareQueueAsync(
        IConnection connection, string virtualHost, string name, IDictionary<string, object?>? arguments, CancellationToken cancellationToken)
    {
        // A channel per queue: a refused declaration closes its channel.
        await using IChannel channel = await connection.CreateChannelAsync(cancellationToken: cancellationToken);
        try
        {
            await channel.ExchangeDeclareAsync(name, ExchangeType.Fanout, durable: true, autoDelete: false, cancellationToken: cancellationToken);
            await channel.QueueDeclareAsync(name, durable: true, exclusive: false, autoDelete: false, arguments: arguments, cancellationToken: cancellationToken);
            await channel.QueueBindAsync(name, name, routingKey: "", cancellationToken: cancellationToken);
        }
        catch (OperationInterruptedException e) when (e.ShutdownReason?.ReplyCode == 406)
        {
            throw new ClusterConfigurationException(
                $"RabbitMQ virtual host '{virtualHost}' holds a queue or exchange '{name}' declared otherwise than this version declares it "
                + $"({e.ShutdownReason.ReplyText}); once it is empty, delete it (rabbitmqctl delete_queue -p {virtualHost} {name}) and start again.");
        }
    }
}
