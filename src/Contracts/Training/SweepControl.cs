namespace Cluster.Contracts.Training;

/// <summary>
/// CLI → the coordinator service: stop dispatching the sweep's work. Segments in flight finish at their checkpoint and
/// are recorded; nothing new is sent until <see cref="ResumeSweep"/>. A sweep already ended is left as it is.
/// </summary>
public sealed record CancelSweep
{
    public required Guid SweepId { get; init; }
}

/// <summary>CLI → the coordinator service: continue a cancelled sweep where it stopped (each trial from its last checkpoint).</summary>
public sealed record ResumeSweep
{
    public required Guid SweepId { get; init; }

    /// <summary>Set by an embedded process starting: nothing can be in flight, so segments recorded as dispatched are sent again.</summary>
    public bool InFlightLost { get; init; }
}

/// <summary>
/// The coordinator service → itself, on its own queue once it starts: send again what every running sweep had dispatched
/// and the missing shards of every feature set being extracted (the sends may have died with the last process). Queued behind the events that arrived while it was down, so those
/// are applied first.
/// </summary>
public sealed record RecoverSweeps
{
    public required DateTime StartedAt { get; init; }
}
