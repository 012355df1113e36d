using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using Cluster.Coordinator.Orchestration;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Files;
using Microsoft.EntityFrameworkCore;

namespace Cluster.Coordinator.Reports;

/// <summary>
/// A sweep's report as one self-contained HTML file: inline CSS and inline SVG plots, no script and no external URL, so it
/// opens the same from a laptop, a shared volume or an e-mail attachment. Every recorded string is HTML-escaped.
/// </summary>
public static class SweepReportWriter
{
    /// <summary>Trials listed in the leaderboard; the rest are in `sweep results`.</summary>
    public const int LeaderboardRows = 100;

    private static readonly CultureInfo c = CultureInfo.InvariantCulture;

    /// <summary>DESIGN.md's place for a sweep's report, relative to the storage root (as the results format names it).</summary>
    public static string RelativePath(Guid sweepId) => $"reports/{sweepId}/index.html";

    /// <summary>Renders the report and replaces the sweep's report file atomically.</summary>
    /// <returns>The report's full path.</returns>
    public static async Task<string> WriteAsync(FileStore store, SweepReportData data, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(data);
        string relative = RelativePath(data.Sweep.Id);
        await store.WriteAllBytesAsync(relative, Encoding.UTF8.GetBytes(Render(data)), ct);
        return store.Resolve(relative);
    }

    /// <summary>Reads what the report shows and writes it.</summary>
    /// <returns>The report's full path, or null when no sweep has the id.</returns>
    public static async Task<string?> WriteAsync(IDbContextFactory<ClusterDbContext> databases, FileStore store, Guid sweepId, CancellationToken ct)
    {
        SweepReportData? data = await SweepReportData.LoadAsync(databases, sweepId, ct);
        return data is null ? null : await WriteAsync(store, data, ct);
    }

    public static string Render(SweepReportData data)
    {
        ArgumentNullException.ThrowIfNull(data);
        SweepRecord sweep = data.Sweep;
        var search = data.Search;
        SweepResults results = SweepResults.From(sweep, data.Trials);
        IReadOnlyList<TrialResult> ranked = Cli.SweepBoard.Leaderboard(results, search.Metric);
        SweepTimeAccount time = SweepTimeAccount.Compute(data);
        ReportPlot[] plots =
        [
            SweepReportPlots.AccuracyByLearningRate(data),
            SweepReportPlots.LearningCurves(data, ranked),
            SweepReportPlots.AshaRungs(data),
            SweepReportPlots.TimeSpent(time),
        ];

        var html = new StringBuilder();
        html.Append("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        html.Append("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
        html.Append("<title>").Append(E($"Sweep {sweep.Name}: report")).Append("</title>\n<style>\n").Append(Css).Append("</style>\n</head>\n<body>\n");
        html.Append("<h1>").Append(E(sweep.Name)).Append("</h1>\n");
        Header(html, data, results, ranked, search);
        Leaderboard(html, results, ranked);
        html.Append("<h2>Plots</h2>\n");
        foreach (ReportPlot plot in plots)
        {
            html.Append("<section class=\"plot\">\n<h3>").Append(E(plot.Title)).Append("</h3>\n");
            if (plot.Svg is string svg)
            {
                html.Append(svg).Append('\n');
            }
            html.Append("<p class=\"note\">").Append(E(plot.Note)).Append("</p>\n</section>\n");
        }
        TimeTables(html, time, data);
        html.Append("<footer>Written by <code>coordinator sweep report</code> at ").Append(E(Time(DateTime.UtcNow))).Append(".</footer>\n");
        html.Append("</body>\n</html>\n");
        return html.ToString();
    }

    private static void Header(StringBuilder html, SweepReportData data, SweepResults results, IReadOnlyList<TrialResult> ranked, Contracts.Training.SweepSearch search)
    {
        SweepRecord sweep = data.Sweep;
        string counts = string.Join(", ", results.Trials.GroupBy(t => t.Status).OrderBy(g => g.Key, StringComparer.Ordinal).Select(g => $"{g.Count()} {g.Key}"));
        var rows = new List<(string, string)>
        {
            ("sweep", sweep.Id.ToString()),
            ("status", results.Status + (sweep.StopReason is string reason ? $" ({reason})" : "")),
            ("search", $"{search.Method}, {search.Parallelism} at a time, ranked by {search.Metric} ({search.Mode})"),
            ("created", Time(sweep.CreatedAt)),
            ("started", sweep.StartedAt is DateTime s ? Time(s) : "not yet"),
            ("completed", sweep.CompletedAt is DateTime e ? Time(e) : "not yet"),
            ("wall time", $"{((sweep.CompletedAt ?? DateTime.UtcNow) - (sweep.StartedAt ?? sweep.CreatedAt)).TotalSeconds.ToString("F1", c)} s"),
            ("spec sha256", sweep.SpecHash),
            ("trials", $"{results.Trials.Count}: {counts}"),
        };
        if (ranked.FirstOrDefault(t => t.Status != "failed" && t.ValAccuracy is not null) is TrialResult best)
        {
            rows.Add(("best trial", $"{best.Id}: validation accuracy {Percent(best.ValAccuracy)}" + (best.TestAccuracy is null ? "" : $", test accuracy {Percent(best.TestAccuracy)}")));
            rows.Add(("its params", string.Join(", ", best.Params.Select(kv => $"{kv.Key}={Cli.SweepBoard.Value(best.Params, kv.Key)}"))));
        }
        html.Append("<table class=\"facts\">\n");
        foreach ((string key, string value) in rows)
        {
            html.Append("<tr><th>").Append(E(key)).Append("</th><td>").Append(E(value)).Append("</td></tr>\n");
        }
        html.Append("</table>\n");
    }

    private static void Leaderboard(StringBuilder html, SweepResults results, IReadOnlyList<TrialResult> ranked)
    {
        string[] varying = Cli.SweepBoard.VaryingParams([.. results.Trials.Select(t => t.Params)]);
        html.Append("<h2>Leaderboard</h2>\n<table class=\"leaderboard\">\n<thead><tr><th>rank</th><th>trial</th><th>status</th>");
        foreach (string field in varying)
        {
            html.Append("<th>").Append(E(field)).Append("</th>");
        }
        html.Append("<th>epochs</th><th>val accuracy</th><th>test accuracy</th><th>seconds</th></tr></thead>\n<tbody>\n");
        int rank = 0;
        foreach (TrialResult t in ranked.Take(LeaderboardRows))
        {
            rank++;
            html.Append("<tr data-trial=\"").Append(E(t.Id)).Append("\"><td>").Append(rank.ToString(c)).Append("</td><td title=\"").Append(E(t.Id)).Append("\">")
                .Append(E(t.Id[..8])).Append("</td><td class=\"").Append(E(t.Status)).Append("\" title=\"").Append(E(t.Failure ?? "")).Append("\">").Append(E(t.Status)).Append("</td>");
            foreach (string field in varying)
            {
                html.Append("<td>").Append(E(Cli.SweepBoard.Value(t.Params, field))).Append("</td>");
            }
            html.Append("<td>").Append(t.Epochs.ToString(c)).Append("</td><td>").Append(Percent(t.ValAccuracy)).Append("</td><td>")
                .Append(Percent(t.TestAccuracy)).Append("</td><td>").Append(t.Seconds.ToString("F1", c)).Append("</td></tr>\n");
        }
        html.Append("</tbody>\n</table>\n");
        if (ranked.Count > LeaderboardRows)
        {
            html.Append("<p class=\"note\">").Append(ranked.Count - LeaderboardRows).Append(" more trial(s): <code>coordinator sweep results ")
                .Append(E(results.Sweep)).Append("</code>.</p>\n");
        }
    }

    private static void TimeTables(StringBuilder html, SweepTimeAccount time, SweepReportData data)
    {
        html.Append("<h2>Time and sharing</h2>\n<table class=\"facts\">\n");
        foreach ((string key, double seconds, string why) in new[]
        {
            ("extraction", time.ExtractionSeconds, "shards of this sweep's feature sets extracted for it (decoding included; taps of one pass count once)"),
            ("training", time.TrainingSeconds, "completed segments"),
            ("waiting: queued", time.QueuedSeconds, "each trial from its creation to its first dispatch"),
            ("waiting: dispatch", time.DispatchGapSeconds, "from dispatch to a worker starting a segment, and between segments"),
            ("saved by sharing", time.SharingSavedSeconds, "(trials that used a feature set − 1) × its extraction seconds, summed"),
        })
        {
            html.Append("<tr><th>").Append(E(key)).Append("</th><td class=\"number\" id=\"seconds-").Append(E(key.Replace(": ", "-", StringComparison.Ordinal).Replace(' ', '-')))
                .Append("\">").Append(seconds.ToString("F1", c)).Append(" s</td><td>").Append(E(why)).Append("</td></tr>\n");
        }
        html.Append("</table>\n");
        if (time.FeatureSets.Count == 0)
        {
            html.Append("<p class=\"note\">No trial trains on cached features: every trial ran its whole network on images.</p>\n");
            return;
        }
        Dictionary<string, FeatureSetRecord> sets = data.FeatureSets.ToDictionary(s => s.Key, StringComparer.Ordinal);
        html.Append("<table class=\"sets\">\n<thead><tr><th>feature set</th><th>layer</th><th>images</th><th>trials using it</th><th>extraction seconds</th><th>extracted</th><th>saved seconds</th></tr></thead>\n<tbody>\n");
        foreach (FeatureSetTime set in time.FeatureSets)
        {
            html.Append("<tr><td><code>").Append(E(set.Key)).Append("</code></td><td>").Append(E(set.Layer)).Append("</td><td>")
                .Append(sets[set.Key].ImageCount.ToString(c)).Append("</td><td>").Append(set.Trials.ToString(c)).Append("</td><td>")
                .Append(set.Seconds.ToString("F1", c)).Append("</td><td>").Append(set.ExtractedForThisSweep ? "for this sweep" : "before it (cache)")
                .Append("</td><td>").Append(set.SavedSeconds.ToString("F1", c)).Append("</td></tr>\n");
        }
        html.Append("</tbody>\n</table>\n");
    }

    private static string E(string text) => WebUtility.HtmlEncode(text);

    private static string Percent(double? value) => value is double v ? v.ToString("P2", c) : "";

    private static string Time(DateTime utc) => utc.ToString("yyyy-MM-dd HH:mm:ss 'UTC'", c);

    private const string Css = """
        body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 62rem; padding: 0 1rem; color: #222; }
        h1 { margin-bottom: 0.5rem; }
        h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
        table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
        th, td { padding: 0.25rem 0.6rem; text-align: left; border-bottom: 1px solid #eee; vertical-align: top; }
        table.facts th { color: #666; font-weight: normal; white-space: nowrap; }
        thead th { background: #f4f4f4; }
        td.number { text-align: right; white-space: nowrap; }
        td.completed { color: #1a7f37; } td.failed { color: #cf222e; } td.stopped { color: #9a6700; }
        section.plot { margin: 1.5rem 0; }
        svg.plot { max-width: 100%; height: auto; border: 1px solid #eee; }
        p.note, footer { color: #666; font-size: 0.85rem; }
        code { font-size: 0.85rem; }

        """;
}
