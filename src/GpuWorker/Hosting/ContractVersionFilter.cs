using Cluster.Contracts;
using MassTransit;

namespace Cluster.GpuWorker.Hosting;

/// <summary>
/// Refuses a job of a <see cref="ContractVersion"/> this worker does not read, before any of it is acted on (a newer
/// coordinator during a rolling upgrade, or a message that did not come from ours). Not retried: the job goes to the error
/// queue at once with the reason, where the coordinator fails its trial or shard; once the workers are upgraded
/// `coordinator errors --requeue` gives a shard or self-test back.
/// </summary>
public sealed class ContractVersionFilter<T> : IFilter<ConsumeContext<T>>
    where T : class
{
    public Task Send(ConsumeContext<T> context, IPipe<ConsumeContext<T>> next)
    {
        if (context.Message is IVersionedJob { Version: not ContractVersion.Current } job)
        {
            throw new UnknownContractVersionException(typeof(T).Name, job.Version);
        }
        return next.Send(context);
    }

    public void Probe(ProbeContext context) => context.CreateFilterScope("contractVersion");
}

public sealed class UnknownContractVersionException(string messageType, int version) : Exception(
    $"{messageType} of contract version {version} cannot be read by this worker, which reads version {ContractVersion.Current}: " +
    "run workers and coordinator of the same release")
{
    public int Version { get; } = version;
}
