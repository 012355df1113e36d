namespace Cluster.Contracts.SelfTest;

/// <summary>Worker → coordinator: a self-test job finished and its result is recorded in the database.</summary>
public sealed record SelfTestCompleted
{
    public required Guid JobId { get; init; }
    public required string WorkerId { get; init; }
    public required double Checksum { get; init; }
}
