using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Cluster.Hosting;
using Cluster.Contracts.Training;
using Cluster.Coordinator.Orchestration;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Microsoft.EntityFrameworkCore;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace Cluster.Coordinator.Cli;

/// <summary>A sweep's state as the CLI shows it: read from the database, which the coordinator service alone writes.</summary>
/// <summary>A feature set being extracted while trials wait for it: its key, and images done of all.</summary>
public sealed record ExtractionInProgress(string Key, string Layer, int ImagesDone, int Images);

public sealed record SweepBoardState(SweepRecord Sweep, IReadOnlyList<TrialRecord> Trials)
{
    /// <summary>The sets being extracted while some of this sweep's trials wait (empty when none waits).</summary>
    public IReadOnlyList<ExtractionInProgress> Extractions { get; init; } = [];

    public bool Ended => Sweep.Status is SweepStatus.Completed or SweepStatus.Failed
        || (Sweep.Status == SweepStatus.Cancelled && Trials.All(t => t.DispatchedSegment is null));
}

/// <summary>
/// The live table of a sweep's trials (`sweep run`, `sweep watch`, `coordinator demo`): state, rung, epoch, metric,
/// worker and the running segment's progress; and the leaderboard at the end. The CLI reads; the service writes.
/// </summary>
public static class SweepBoard
{
    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(500);
    private static readonly JsonSerializerOptions s_json = new(JsonSerializerDefaults.Web);
    private static readonly CultureInfo c = CultureInfo.InvariantCulture;

    public static async Task<SweepBoardState?> LoadAsync(IDbContextFactory<ClusterDbContext> databases, Guid sweepId, CancellationToken ct)
    {
        await using ClusterDbContext db = await databases.CreateDbContextAsync(ct);
        SweepRecord? sweep = await db.Sweeps.AsNoTracking().SingleOrDefaultAsync(s => s.Id == sweepId, ct);
        if (sweep is null)
        {
            return null;
        }
        // The plan (settings and data, several KB a trial) is not needed to show a trial.
        List<TrialRecord> trials = await db.Trials.AsNoTracking().Where(t => t.SweepId == sweepId).OrderBy(t => t.Number)
            .Select(t => new TrialRecord
            {
                Id = t.Id, SweepId = t.SweepId, Number = t.Number, Hyperparameters = t.Hyperparameters, Strategy = t.Strategy, Status = t.Status,
                Epochs = t.Epochs, Epoch = t.Epoch, TargetEpochs = t.TargetEpochs, ValidationAccuracy = t.ValidationAccuracy, ValidationLoss = t.ValidationLoss,
                BestMetric = t.BestMetric, TestAccuracy = t.TestAccuracy, WorkerId = t.WorkerId, Progress = t.Progress, DispatchedSegment = t.DispatchedSegment,
                Seconds = t.Seconds, FailureReason = t.FailureReason, Attempts = t.Attempts,
            }).ToListAsync(ct);
        IReadOnlyList<ExtractionInProgress> extractions = [];
        if (trials.Any(t => t.Status == TrialStatus.WaitingForFeatures))
        {
            // Few sets extract at once (one pass makes several): their rows and complete shards' image counts.
            var sets = await db.FeatureSets.AsNoTracking().Where(f => f.Status == FeatureSetStatus.Extracting)
                .Select(f => new { f.Key, f.Layer, f.ImageCount }).ToListAsync(ct);
            string[] keys = [.. sets.Select(f => f.Key)];
            var done = await db.FeatureShards.AsNoTracking().Where(f => keys.Contains(f.FeatureSetKey) && f.Status == FeatureShardStatus.Complete)
                .GroupBy(f => f.FeatureSetKey).Select(g => new { Key = g.Key, Images = g.Sum(f => f.ImageCount + f.SkippedCount) }).ToListAsync(ct);
            extractions = [.. sets.Select(f => new ExtractionInProgress(f.Key, f.Layer, done.FirstOrDefault(d => d.Key == f.Key)?.Images ?? 0, f.ImageCount))];
        }
        return new SweepBoardState(sweep, trials) { Extractions = extractions };
    }

    /// <summary>
    /// Follows the sweep until it ends (or <paramref name="timeout"/>), redrawing the table in a terminal; with output
    /// redirected it only waits. Returns whether it ended.
    /// </summary>
    public static async Task<bool> FollowAsync(IDbContextFactory<ClusterDbContext> databases, Guid sweepId, TimeSpan timeout, bool live, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        bool TimedOut() => timeout > TimeSpan.Zero && clock.Elapsed > timeout;
        // A sweep just submitted is recorded once the service has taken the message.
        SweepBoardState? first = await LoadAsync(databases, sweepId, ct);
        while (first is null)
        {
            if (clock.Elapsed > TimeSpan.FromSeconds(60))
            {
                throw new ClusterConfigurationException($"sweep {sweepId} is not recorded after 60 s: is the coordinator service (`coordinator serve`) running?");
            }
            await Task.Delay(PollInterval, ct);
            first = await LoadAsync(databases, sweepId, ct);
        }
        SweepBoardState state = first;
        if (!live || Console.IsOutputRedirected)
        {
            while (!state.Ended && !TimedOut())
            {
                await Task.Delay(PollInterval, ct);
                state = (await LoadAsync(databases, sweepId, ct))!;
            }
            return state.Ended;
        }
        await AnsiConsole.Live(Render(state, clock.Elapsed)).AutoClear(false).StartAsync(async live =>
        {
            while (!state.Ended && !TimedOut())
            {
                await Task.Delay(PollInterval, ct);
                state = (await LoadAsync(databases, sweepId, ct))!;
                live.UpdateTarget(Render(state, clock.Elapsed));
            }
        });
        return state.Ended;
    }

    /// <summary>The live table: one row a trial (the most recent 40 of a big sweep, running ones first).</summary>
    public static IRenderable Render(SweepBoardState state, TimeSpan elapsed)
    {
        SweepRecord sweep = state.Sweep;
        string[] varying = Varying(state.Trials);
        int done = state.Trials.Count(t => t.Status is TrialStatus.Completed or TrialStatus.Stopped or TrialStatus.Failed);
        int waiting = state.Trials.Count(t => t.Status == TrialStatus.WaitingForFeatures);
        var table = new Table().Border(TableBorder.Rounded)
            .Title(Markup.Escape($"sweep {sweep.Name} ({sweep.Id.ToString()[..8]}): {Name(sweep.Status)}, {done}/{state.Trials.Count} trials ended"
                + (waiting > 0 ? $", {waiting} waiting for features" : "") + $", {elapsed.TotalSeconds:F0} s"))
            .AddColumn("trial").AddColumn("state");
        if (state.Extractions.Count > 0)
        {
            table.Caption(Markup.Escape("extracting: " + string.Join("; ", state.Extractions.Select(e => $"{e.Layer} {e.ImagesDone}/{e.Images} images ({e.Key})"))));
        }
        foreach (string field in varying)
        {
            table.AddColumn(field);
        }
        table.AddColumns("epochs", "rung", "val acc", "best", "worker", "now");
        IEnumerable<TrialRecord> shown = state.Trials.Count <= 40
            ? state.Trials
            : state.Trials.Where(t => t.Status == TrialStatus.Running).Concat(state.Trials.Where(t => t.Status != TrialStatus.Running).OrderByDescending(t => t.Epoch ?? -1)).Take(40).OrderBy(t => t.Number);
        foreach (TrialRecord t in shown)
        {
            JsonObject p = JsonNode.Parse(t.Hyperparameters)!.AsObject();
            table.AddRow([
                t.Number.ToString(c), StateMarkup(t), .. varying.Select(f => Markup.Escape(Value(p, f))),
                $"{(t.Epoch ?? -1) + 1}/{t.Epochs}", t.TargetEpochs > 0 && t.TargetEpochs < t.Epochs ? t.TargetEpochs.ToString(c) : "",
                Percent(t.ValidationAccuracy), Percent(t.BestMetric), Markup.Escape(t.WorkerId ?? ""), Markup.Escape(Now(t)),
            ]);
        }
        return table;
    }

    /// <summary>The ended sweep's trials, best first by the sweep's metric; failures last, with their reasons.</summary>
    public static IReadOnlyList<TrialResult> Leaderboard(SweepResults results, string metric)
    {
        ArgumentNullException.ThrowIfNull(results);
        bool loss = metric == "val_loss";
        return [.. results.Trials
            .OrderBy(t => t.Status == "failed" ? 1 : 0)
            .ThenBy(t => (loss ? t.ValLoss : t.ValAccuracy) is null ? 1 : 0)
            .ThenBy(t => loss ? t.ValLoss ?? 0 : -(t.ValAccuracy ?? 0))
            .ThenBy(t => t.TestAccuracy is null ? 1 : 0)
            .ThenByDescending(t => t.TestAccuracy ?? 0)];
    }

    public static Table LeaderboardTable(SweepResults results, IReadOnlyList<TrialResult> ranked, string title)
    {
        ArgumentNullException.ThrowIfNull(results);
        ArgumentNullException.ThrowIfNull(ranked);
        string[] varying = VaryingParams(results.Trials.Select(t => t.Params).ToList());
        var table = new Table().Border(TableBorder.Rounded).Title(Markup.Escape(title)).AddColumns("rank", "trial", "status");
        foreach (string field in varying)
        {
            table.AddColumn(field);
        }
        table.AddColumns("epochs", "val accuracy", "test accuracy", "seconds");
        int rank = 0;
        foreach (TrialResult t in ranked)
        {
            rank++;
            table.AddRow([
                rank.ToString(c), t.Id[..8], t.Status, .. varying.Select(f => Markup.Escape(Value(t.Params, f))), t.Epochs.ToString(c),
                Percent(t.ValAccuracy), Percent(t.TestAccuracy), t.Seconds.ToString("F1", c),
            ]);
        }
        return table;
    }

    private static string[] Varying(IReadOnlyList<TrialRecord> trials) =>
        VaryingParams([.. trials.Select(t => JsonNode.Parse(t.Hyperparameters)!.AsObject())]);

    /// <summary>
    /// The hyperparameters whose values differ between the trials that use them (the others say nothing about a row);
    /// strategy always. A trial whose strategy does not use a field has none, and shows a blank there.
    /// </summary>
    internal static string[] VaryingParams(IReadOnlyList<JsonObject> trials)
    {
        var fields = new List<string>();
        foreach (string field in trials.SelectMany(t => t.Select(kv => kv.Key)).Distinct())
        {
            if (field == "strategy" || trials.Where(t => t.ContainsKey(field)).Select(t => Value(t, field)).Distinct().Count() > 1)
            {
                fields.Add(field);
            }
        }
        return [.. fields];
    }

    internal static string Value(JsonObject p, string field) =>
        p.TryGetPropertyValue(field, out JsonNode? v) && v is not null
            ? v is JsonValue value && value.TryGetValue(out double d) ? d.ToString("G4", c) : v.ToString()
            : "";

    private static string StateMarkup(TrialRecord t) => t.Status switch
    {
        TrialStatus.Running when t.DispatchedSegment is null => "[grey]paused[/]",
        TrialStatus.Running => "[blue]running[/]",
        TrialStatus.WaitingForFeatures => "[grey]waiting for features[/]",
        TrialStatus.Completed => "[green]completed[/]",
        TrialStatus.Stopped => "[yellow]stopped[/]",
        TrialStatus.Failed => "[red]failed[/]",
        _ => "[grey]pending[/]",
    };

    private static string Now(TrialRecord t)
    {
        if (t.Status == TrialStatus.Failed)
        {
            return t.FailureReason is string r ? (r.Length > 60 ? r[..57] + "..." : r) : "";
        }
        if (t.Progress is string json && JsonSerializer.Deserialize<TrialProgress>(json, s_json) is TrialProgress p)
        {
            return $"epoch {p.Epoch + 1} {p.Phase} {p.Batch}/{p.Batches} loss {p.Loss:F3} {p.ImagesPerSecond:F0} img/s";
        }
        return t.DispatchedSegment is int s ? $"segment {s} queued" : "";
    }

    public static string Name<T>(T status) where T : struct, Enum =>
        System.Text.RegularExpressions.Regex.Replace(status.ToString(), "(?<=[a-z])(?=[A-Z])", "-").ToLowerInvariant(); // waiting-for-features

    public static string Percent(double? value) => value is double v ? v.ToString("P2", c) : "";
}
