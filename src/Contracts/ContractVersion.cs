namespace Cluster.Contracts;

/// <summary>
/// The shape of the job messages (coordinator → worker). It changes when a job's fields change meaning or a required one
/// is added; a worker refuses a job of a version it does not read rather than guess at it: the job goes to the error
/// queue with the reason (its trial fails, `coordinator errors` lists it), and nothing else stops.
/// </summary>
public static class ContractVersion
{
    /// <summary>The version this build sends and reads. Jobs sent before the field existed read as version 1.</summary>
    public const int Current = 1;
}

/// <summary>A job message that carries the <see cref="ContractVersion"/> its sender wrote.</summary>
public interface IVersionedJob
{
    int Version { get; }
}
