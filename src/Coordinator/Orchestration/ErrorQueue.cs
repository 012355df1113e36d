using System.Text.Json;
using Cluster.Contracts;
using Cluster.Hosting;
using RabbitMQ.Client;

namespace Cluster.Coordinator.Orchestration;

/// <summary>One job in the error queue, as `coordinator errors` shows it.</summary>
public sealed record DeadJob(
    string Kind, string Job, Guid? SweepId, Guid? TrialId, string? FeatureSetKey, string Reason, DateTime? FailedAt, string MessageType)
{
    /// <summary>Whether sending it again can help: an extraction shard or a self-test. A segment's trial was failed
    /// when the segment died, and the search has moved on without it.</summary>
    public bool Requeueable => Kind is Kinds.Shard or Kinds.SelfTest;

    public static class Kinds
    {
        public const string Segment = "segment";
        public const string Shard = "shard";
        public const string SelfTest = "selftest";
        public const string Unknown = "unknown";
    }
}

/// <summary>
/// The error queue read through a plain AMQP channel: jobs are taken without acknowledgement, so that closing the channel
/// (disposing this) puts every one not requeued back where it was. Requeuing publishes the job, minus its failure headers,
/// to the shared queue's exchange with a publisher confirm, and only then acknowledges the dead copy: a crash in between
/// leaves the job in both queues, never in neither (a shard done twice is recorded once).
/// </summary>
public sealed class ErrorQueue : IAsyncDisposable
{
    private readonly IConnection _connection;
    private readonly IChannel _channel;
    private readonly Dictionary<DeadJob, BasicGetResult> _deliveries = new(ReferenceEqualityComparer.Instance);

    private ErrorQueue(IConnection connection, IChannel channel)
    {
        _connection = connection;
        _channel = channel;
    }

    public static async Task<ErrorQueue> OpenAsync(RabbitMqOptions options, CancellationToken cancellationToken)
    {
        IConnection connection = await ConnectivityCheck.Connect(options, "coordinator-errors").CreateConnectionAsync(cancellationToken);
        try
        {
            IChannel channel = await connection.CreateChannelAsync(
                new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true), cancellationToken);
            return new ErrorQueue(connection, channel);
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    /// <summary>Takes up to <paramref name="limit"/> jobs, oldest first, without removing them.</summary>
    public async Task<IReadOnlyList<DeadJob>> TakeAsync(int limit, CancellationToken cancellationToken)
    {
        var jobs = new List<DeadJob>();
        while (jobs.Count < limit && await _channel.BasicGetAsync(QueueNames.GpuWorkError, autoAck: false, cancellationToken) is BasicGetResult delivery)
        {
            DeadJob job = Describe(delivery);
            _deliveries[job] = delivery;
            jobs.Add(job);
        }
        return jobs;
    }

    /// <summary>Sends the job back to the shared queue and removes it from the error queue.</summary>
    public async Task RequeueAsync(DeadJob job, CancellationToken cancellationToken)
    {
        BasicGetResult delivery = _deliveries[job];
        var properties = new BasicProperties(delivery.BasicProperties) { Persistent = true };
        if (delivery.BasicProperties.Headers is { } headers)
        {
            properties.Headers = headers.Where(h => !DeadJobReason.IsFailureHeader(h.Key)).ToDictionary(h => h.Key, h => h.Value);
        }
        // Awaits the broker's confirm (the channel tracks confirmations): acknowledged only once it is safely queued again.
        await _channel.BasicPublishAsync(QueueNames.GpuWork, routingKey: "", mandatory: true, properties, delivery.Body, cancellationToken);
        await _channel.BasicAckAsync(delivery.DeliveryTag, multiple: false, cancellationToken);
        _deliveries.Remove(job);
    }

    public async ValueTask DisposeAsync()
    {
        // Closing the channel returns every job taken and not requeued to the error queue.
        await _channel.DisposeAsync();
        await _connection.DisposeAsync();
    }

    /// <summary>What the job is, from MassTransit's envelope (the body) and its headers; a body that is not an envelope is "unknown", never an error.</summary>
    public static DeadJob Describe(BasicGetResult delivery)
    {
        ArgumentNullException.ThrowIfNull(delivery);
        IDictionary<string, object?>? headers = delivery.BasicProperties.Headers;
        object? Header(string name) => headers is not null && headers.TryGetValue(name, out object? value) ? value : null;
        string reason = DeadJobReason.Describe(Header, JobQueues.DeliveryLimit);
        DateTime? failedAt = FailedAt(Header);
        string messageType = "";
        try
        {
            using JsonDocument envelope = JsonDocument.Parse(delivery.Body);
            JsonElement root = envelope.RootElement;
            if (root.TryGetProperty("messageType", out JsonElement types) && types.ValueKind == JsonValueKind.Array && types.GetArrayLength() > 0)
            {
                messageType = types[0].GetString() ?? "";
            }
            JsonElement message = root.TryGetProperty("message", out JsonElement m) ? m : default;
            string? Text(string name) => message.ValueKind == JsonValueKind.Object && message.TryGetProperty(name, out JsonElement e) ? e.ToString() : null;
            Guid? Id(string name) => Guid.TryParse(Text(name), out Guid id) ? id : null;
            if (messageType.EndsWith(":TrainSegment", StringComparison.Ordinal))
            {
                return new DeadJob(DeadJob.Kinds.Segment, $"trial {Text("trialId")} segment {Text("segment")}", Id("sweepId"), Id("trialId"), null, reason, failedAt, messageType);
            }
            if (messageType.EndsWith(":ExtractFeatures", StringComparison.Ordinal))
            {
                return new DeadJob(DeadJob.Kinds.Shard, $"{Text("featureSetKey")} shard {Text("shardIndex")}", null, null, Text("featureSetKey"), reason, failedAt, messageType);
            }
            if (messageType.EndsWith(":RunSelfTest", StringComparison.Ordinal))
            {
                return new DeadJob(DeadJob.Kinds.SelfTest, $"self-test {Text("jobId")}", null, null, null, reason, failedAt, messageType);
            }
        }
        catch (JsonException)
        {
            // Not MassTransit's envelope: listed as unknown, with its reason.
        }
        return new DeadJob(DeadJob.Kinds.Unknown, delivery.BasicProperties.MessageId ?? "(no message id)", null, null, null, reason, failedAt, messageType);
    }

    /// <summary>When it failed: MassTransit's fault time, else when the broker dead-lettered it.</summary>
    private static DateTime? FailedAt(Func<string, object?> header)
    {
        if (DeadJobReason.Text(header(DeadJobReason.FaultTimestamp)) is string text
            && DateTime.TryParse(text, System.Globalization.CultureInfo.InvariantCulture, System.Globalization.DateTimeStyles.AdjustToUniversal | System.Globalization.DateTimeStyles.AssumeUniversal, out DateTime at))
        {
            return at;
        }
        if (header("x-death") is IList<object?> deaths && deaths.Count > 0 && deaths[0] is IDictionary<string, object?> first && first.TryGetValue("time", out object? time) && time is AmqpTimestamp stamp)
        {
            return DateTimeOffset.FromUnixTimeSeconds(stamp.UnixTime).UtcDateTime;
        }
        return null;
    }
}
