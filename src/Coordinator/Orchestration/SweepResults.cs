using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Microsoft.EntityFrameworkCore;

namespace Cluster.Coordinator.Orchestration;

/// <summary>DESIGN.md's results format: what `sweep run` and `sweep results --format json` print.</summary>
public sealed record SweepResults(
    [property: JsonPropertyName("sweep")] string Sweep,
    [property: JsonPropertyName("name")] string Name,
    [property: JsonPropertyName("status")] string Status,
    [property: JsonPropertyName("report")] string Report,
    [property: JsonPropertyName("trials")] IReadOnlyList<TrialResult> Trials)
{
    public static readonly JsonSerializerOptions Json = new() { WriteIndented = true, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull };

    public static async Task<SweepResults> LoadAsync(IDbContextFactory<ClusterDbContext> databases, Guid sweepId, CancellationToken ct)
    {
        await using ClusterDbContext db = await databases.CreateDbContextAsync(ct);
        SweepRecord sweep = await db.Sweeps.AsNoTracking().SingleAsync(s => s.Id == sweepId, ct);
        List<TrialRecord> trials = await db.Trials.AsNoTracking().Where(t => t.SweepId == sweepId).OrderBy(t => t.Number).ToListAsync(ct);
        return From(sweep, trials);
    }

    /// <summary>The results of records already read (the report reads them with the rest of what it shows).</summary>
    public static SweepResults From(SweepRecord sweep, IEnumerable<TrialRecord> trials)
    {
        ArgumentNullException.ThrowIfNull(sweep);
        ArgumentNullException.ThrowIfNull(trials);
        return new SweepResults(sweep.Id.ToString(), sweep.Name, StatusName(sweep.Status), $"reports/{sweep.Id}/index.html",
            [.. trials.OrderBy(t => t.Number).Select(t => new TrialResult(
                t.Id.ToString(), StatusName(t.Status), JsonNode.Parse(t.Hyperparameters)!.AsObject(), (t.Epoch ?? -1) + 1,
                t.BestMetric, t.TestAccuracy, Math.Round(t.Seconds, 2), t.Checkpoint, t.FailureReason, t.ValidationLoss))]);
    }

    private static string StatusName<T>(T status) where T : struct, Enum =>
        System.Text.RegularExpressions.Regex.Replace(status.ToString(), "(?<=[a-z])(?=[A-Z])", "-").ToLowerInvariant(); // waiting-for-features
}

/// <param name="Epochs">Epochs trained (fewer than planned when the trial stopped early).</param>
/// <param name="ValAccuracy">The best validation accuracy of the trial (that of the checkpoint it keeps).</param>
/// <param name="ValLoss">The validation loss after its last epoch (what a `val_loss` sweep ranks by).</param>
public sealed record TrialResult(
    [property: JsonPropertyName("id")] string Id,
    [property: JsonPropertyName("status")] string Status,
    [property: JsonPropertyName("params")] JsonObject Params,
    [property: JsonPropertyName("epochs")] int Epochs,
    [property: JsonPropertyName("val_accuracy")] double? ValAccuracy,
    [property: JsonPropertyName("test_accuracy")] double? TestAccuracy,
    [property: JsonPropertyName("seconds")] double Seconds,
    [property: JsonPropertyName("checkpoint")] string? Checkpoint,
    [property: JsonPropertyName("failure")] string? Failure,
    [property: JsonPropertyName("val_loss")] double? ValLoss = null);
