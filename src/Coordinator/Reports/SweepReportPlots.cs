using System.Globalization;
using System.Net;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Cluster.Coordinator.Cli;
using Cluster.Coordinator.Orchestration;
using Cluster.Coordinator.Search;
using Cluster.Storage.Database.Entities;
using ScottPlot;

namespace Cluster.Coordinator.Reports;

/// <summary>A plot of the report: inline SVG, or, when there is nothing to draw, the sentence that says why.</summary>
public sealed record ReportPlot(string Title, string? Svg, string Note);

/// <summary>
/// The report's plots, drawn with ScottPlot and rendered as SVG (text stays text; no raster, nothing to fetch). Each
/// returns a <see cref="ReportPlot"/> whose SVG can be placed in an HTML page beside the others.
/// </summary>
public static partial class SweepReportPlots
{
    private const int Width = 760;
    private const int Height = 420;
    private static readonly CultureInfo c = CultureInfo.InvariantCulture;

    /// <summary>(1) Each trial's best validation accuracy against its learning rate (log axis), a series per strategy and cutoff.</summary>
    public static ReportPlot AccuracyByLearningRate(SweepReportData data)
    {
        ArgumentNullException.ThrowIfNull(data);
        const string title = "Validation accuracy against learning rate";
        var points = new List<(string Series, double Lr, double Accuracy)>();
        int withoutRate = 0;
        foreach (TrialRecord trial in data.Trials.Where(t => t.BestMetric is not null))
        {
            JsonObject p = JsonNode.Parse(trial.Hyperparameters)!.AsObject();
            if (Number(p, "lr") is not double lr || lr <= 0)
            {
                withoutRate++;
                continue;
            }
            string cutoff = SweepBoard.Value(p, "cutoff");
            points.Add((cutoff.Length == 0 ? trial.Strategy : $"{trial.Strategy} @ {cutoff}", lr, trial.BestMetric!.Value));
        }
        string left = withoutRate == 0 ? "" : $" {withoutRate} trial(s) use no learning rate (a logistic, knn or sdca head) and are not on it.";
        if (points.Count == 0)
        {
            return new ReportPlot(title, null, "No trial with a learning rate has a validation accuracy yet." + left);
        }
        var plot = new Plot();
        foreach (IGrouping<string, (string Series, double Lr, double Accuracy)> series in points.GroupBy(q => q.Series).OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            var ordered = series.OrderBy(q => q.Lr).ToArray();
            var scatter = plot.Add.ScatterPoints(ordered.Select(q => Math.Log10(q.Lr)).ToArray(), ordered.Select(q => q.Accuracy).ToArray());
            scatter.LegendText = series.Key;
            scatter.MarkerSize = 9;
        }
        LogTicks(plot, points.Select(q => q.Lr));
        plot.Title(title);
        plot.XLabel("learning rate (log scale)");
        plot.YLabel("validation accuracy");
        // Beside the data, never over it: points cluster wherever the accuracy is.
        plot.ShowLegend(Edge.Right);
        return Render(plot, "accuracy-lr", title, "Each point is a trial's best validation accuracy." + left);
    }

    /// <summary>(2) Validation accuracy by epoch of the best trials (those the leaderboard ranks first).</summary>
    public static ReportPlot LearningCurves(SweepReportData data, IReadOnlyList<TrialResult> ranked, int count = 5)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(ranked);
        const string title = "Learning curves of the best trials";
        ILookup<Guid, EpochMetricRecord> metrics = data.ValidationMetrics.ToLookup(m => m.TrialId);
        Dictionary<string, TrialRecord> trials = data.Trials.ToDictionary(t => t.Id.ToString());
        TrialRecord[] best = [.. ranked.Select(r => trials[r.Id]).Where(t => metrics[t.Id].Any()).Take(count)];
        if (best.Length == 0)
        {
            return new ReportPlot(title, null, "No trial has recorded a validation epoch yet.");
        }
        string[] varying = SweepBoard.VaryingParams([.. best.Select(t => JsonNode.Parse(t.Hyperparameters)!.AsObject())]);
        var plot = new Plot();
        foreach (TrialRecord trial in best)
        {
            EpochMetricRecord[] curve = [.. metrics[trial.Id].OrderBy(m => m.Epoch)];
            var line = plot.Add.Scatter(curve.Select(m => m.Epoch + 1.0).ToArray(), curve.Select(m => m.Accuracy).ToArray());
            JsonObject p = JsonNode.Parse(trial.Hyperparameters)!.AsObject();
            line.LegendText = $"#{trial.Number} " + string.Join(" ", varying.Select(f => (f, v: SweepBoard.Value(p, f))).Where(x => x.v.Length > 0)
                .Select(x => x.f == "strategy" ? x.v : $"{x.f}={x.v}"));
            line.MarkerSize = 7;
        }
        IntegerTicks(plot, best.SelectMany(t => metrics[t.Id]).Select(m => m.Epoch + 1));
        plot.Title(title);
        plot.XLabel("epoch");
        plot.YLabel("validation accuracy");
        plot.ShowLegend(Edge.Bottom);
        // Taller: the legend below names each trial by its values and takes a line per trial.
        return Render(plot, "learning-curves", title,
            $"The {best.Length} best trial(s); a head trained on features in one go (logistic, knn, sdca) has a single point.", Height + 24 * best.Length);
    }

    /// <summary>(3) ASHA: each trial's metric at each rung it reached, a line per trial.</summary>
    public static ReportPlot AshaRungs(SweepReportData data)
    {
        ArgumentNullException.ThrowIfNull(data);
        const string title = "ASHA rungs";
        var search = data.Search;
        if (!string.Equals(search.Method, "asha", StringComparison.OrdinalIgnoreCase))
        {
            return new ReportPlot(title, null, $"This sweep's search is {search.Method}, not ASHA: every trial trained its full epochs, so there are no rungs.");
        }
        int maxEpochs = search.MaxEpochs > 0 ? search.MaxEpochs : data.Trials.Select(t => t.Epochs).DefaultIfEmpty(1).Max();
        IReadOnlyList<int> rungs = AshaSearch.Rungs(Math.Max(1, search.MinEpochs), Math.Max(maxEpochs, search.MinEpochs), search.Reduction);
        bool loss = search.Metric == "val_loss";
        ILookup<Guid, EpochMetricRecord> metrics = data.ValidationMetrics.ToLookup(m => m.TrialId);
        var plot = new Plot();
        int drawn = 0;
        foreach (TrialRecord trial in data.Trials)
        {
            Dictionary<int, EpochMetricRecord> byEpoch = metrics[trial.Id].ToDictionary(m => m.Epoch);
            int[] reached = [.. rungs.Where(r => byEpoch.ContainsKey(r - 1))];
            if (reached.Length == 0)
            {
                continue;
            }
            var line = plot.Add.Scatter(reached.Select(r => (double)r).ToArray(), reached.Select(r => loss ? byEpoch[r - 1].Loss : byEpoch[r - 1].Accuracy).ToArray());
            line.LegendText = $"#{trial.Number}";
            line.MarkerSize = 8;
            drawn++;
        }
        string rungText = string.Join(", ", rungs);
        if (drawn == 0)
        {
            return new ReportPlot(title, null, $"No trial has reached a rung yet (rungs at epochs {rungText}).");
        }
        foreach (int rung in rungs)
        {
            plot.Add.VerticalLine(rung, 1, Colors.Gray.WithAlpha(0.5), LinePattern.Dashed);
        }
        plot.Axes.Bottom.SetTicks([.. rungs.Select(r => (double)r)], [.. rungs.Select(r => r.ToString(c))]);
        plot.Title(title);
        plot.XLabel("rung (epochs trained)");
        plot.YLabel(loss ? "validation loss" : "validation accuracy");
        if (drawn <= 12)
        {
            plot.ShowLegend(Edge.Right);
        }
        return Render(plot, "asha-rungs", title,
            $"Rungs at epochs {rungText} (reduction {search.Reduction.ToString(c)}): a line stops where its trial was not promoted.");
    }

    /// <summary>(4) Where the time went, and what sharing frozen prefixes saved.</summary>
    public static ReportPlot TimeSpent(SweepTimeAccount time)
    {
        ArgumentNullException.ThrowIfNull(time);
        const string title = "Where the time went";
        (string Label, double Seconds)[] items =
        [
            ("extraction", time.ExtractionSeconds),
            ("training", time.TrainingSeconds),
            ("waiting: queued", time.QueuedSeconds),
            ("waiting: dispatch", time.DispatchGapSeconds),
            ("saved by sharing", time.SharingSavedSeconds),
        ];
        var plot = new Plot();
        var bars = items.Select((item, i) => new Bar
        {
            Position = i,
            Value = item.Seconds,
            // The saving is not time spent: it stands apart in colour.
            FillColor = i == items.Length - 1 ? Colors.SeaGreen : Colors.SteelBlue,
            Label = item.Seconds.ToString("F1", c) + " s",
        }).ToArray();
        plot.Add.Bars(bars);
        plot.Axes.Bottom.SetTicks([.. items.Select((_, i) => (double)i)], [.. items.Select(item => item.Label)]);
        plot.Axes.Margins(bottom: 0);
        plot.Title(title);
        plot.XLabel("worker-seconds, summed over trials");
        plot.YLabel("seconds");
        return Render(plot, "time", title,
            "Decoding is not recorded on its own: it is inside extraction (and inside training for strategies that train from images).");
    }

    /// <summary>
    /// The plot as SVG for an HTML page: no XML declaration, a title for screen readers, a viewBox so CSS can scale it, and
    /// its element ids (clip paths) prefixed, since every plot names them alike and ids are per document.
    /// </summary>
    private static ReportPlot Render(Plot plot, string id, string title, string note, int height = Height)
    {
        string svg = plot.GetSvgXml(Width, height);
        svg = svg[svg.IndexOf("<svg", StringComparison.Ordinal)..];
        svg = ElementId().Replace(svg, m => $"{m.Groups[1].Value}{id}-{m.Groups[2].Value}");
        int open = svg.IndexOf('>', StringComparison.Ordinal);
        svg = $"<svg class=\"plot\" id=\"{id}\" role=\"img\" aria-labelledby=\"{id}-title\" viewBox=\"0 0 {Width} {height}\"" + svg[4..open]
            + $"><title id=\"{id}-title\">{WebUtility.HtmlEncode(title)}</title>" + svg[(open + 1)..];
        return new ReportPlot(title, svg, note);
    }

    /// <summary>Ticks at the rates tried when they are few (a grid), else at each power of ten.</summary>
    private static void LogTicks(Plot plot, IEnumerable<double> rates)
    {
        double[] distinct = [.. rates.Distinct().Order()];
        if (distinct.Length <= 8)
        {
            plot.Axes.Bottom.SetTicks([.. distinct.Select(Math.Log10)], [.. distinct.Select(r => r.ToString("G3", c))]);
            return;
        }
        int low = (int)Math.Floor(Math.Log10(distinct[0]));
        int high = (int)Math.Ceiling(Math.Log10(distinct[^1]));
        int[] decades = [.. Enumerable.Range(low, high - low + 1)];
        plot.Axes.Bottom.SetTicks([.. decades.Select(d => (double)d)], [.. decades.Select(d => Math.Pow(10, d).ToString("G3", c))]);
    }

    private static void IntegerTicks(Plot plot, IEnumerable<int> values)
    {
        int[] distinct = [.. values.Distinct().Order()];
        if (distinct.Length <= 12)
        {
            plot.Axes.Bottom.SetTicks([.. distinct.Select(v => (double)v)], [.. distinct.Select(v => v.ToString(c))]);
        }
    }

    private static double? Number(JsonObject p, string field) =>
        p.TryGetPropertyValue(field, out JsonNode? v) && v is JsonValue value && value.TryGetValue(out double d) ? d : null;

    /// <summary>An id's definition or a reference to one: id="X", url(#X), href="#X".</summary>
    [GeneratedRegex("""(id="|url\(#|href="#)([A-Za-z_][\w.-]*)""")]
    private static partial Regex ElementId();
}
