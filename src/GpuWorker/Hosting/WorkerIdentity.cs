using System.Reflection;
using Cluster.GpuWorker.Devices;

namespace Cluster.GpuWorker.Hosting;

/// <summary>Who this worker is, as reported in every heartbeat and recorded with every result.</summary>
public sealed record WorkerIdentity(string WorkerId, string Host, TorchDevice Device, string Version)
{
    public static WorkerIdentity Create(string? configuredId, TorchDevice device)
    {
        string host = Environment.MachineName;
        string id = string.IsNullOrWhiteSpace(configuredId)
            ? $"{host}-{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..6]}"
            : configuredId.Trim();
        string version = typeof(WorkerIdentity).Assembly
            .GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "0.0.0";
        return new WorkerIdentity(id, host, device, version);
    }
}
