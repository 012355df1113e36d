using System.Reflection;
using Cluster.GpuWorker.Devices;

namespace Cluster.GpuWorker.Hosting;

/// <summary>Who this worker is, as reported in every heartbeat and recorded with every result.</summary>
public sealed record WorkerIdentity(string WorkerId, string Host, TorchDevice Device, string Version)
{
    /// <summary>This worker's own queue of directed segments, where it has one: over RabbitMQ (a cluster worker), not
    /// in embedded mode, where the one in-process worker takes everything anyway.</summary>
    public string? DirectQueue { get; init; }

    public static WorkerIdentity Create(string? configuredId, TorchDevice device, bool directQueue = false)
    {
        string host = Environment.MachineName;
        string id = string.IsNullOrWhiteSpace(configuredId)
            ? $"{host}-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..6]}"
            : configuredId.Trim();
        string version = typeof(WorkerIdentity).Assembly
            .GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "0.0.0";
        return new WorkerIdentity(id, host, device, version) { DirectQueue = directQueue ? Contracts.QueueNames.WorkerQueue(id) : null };
    }
}
