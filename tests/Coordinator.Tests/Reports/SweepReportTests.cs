using System.Text.Json;
using System.Xml.Linq;
using AngleSharp.Html.Dom;
using AngleSharp.Html.Parser;
using Cluster.Coordinator.Reports;
using Cluster.Storage.Database.Entities;
using Shouldly;

namespace Cluster.Coordinator.Tests.Reports;

/// <summary>
/// The report's arithmetic and rendering on hand-made records: where the time went, what sharing saved (a set used by
/// several trials, a set from the cache, taps of one pass counted once), and an ASHA sweep's four plots.
/// </summary>
public sealed class SweepReportTests
{
    private static readonly DateTime T0 = new(2026, 12, 1, 10, 0, 0, DateTimeKind.Utc);

    /// <summary>
    /// Sets: "A" (layer3) and "A2" (layer2) computed in one pass over the same two shards after the previous sweep; "C" from
    /// the cache (recorded before the previous sweep). Trials: 1 uses A and C, 2 uses A, A2 and C, 3 uses A2, 4 never started.
    /// </summary>
    private static SweepReportData Records(string name = "hand-made", string search = """{"method":"asha","parallelism":2,"metric":"val_accuracy","mode":"max","minEpochs":1,"maxEpochs":9,"reduction":3}""")
    {
        var sweep = new SweepRecord
        {
            Id = Guid.NewGuid(), Name = name, SpecText = "name: x", SpecHash = "abc123", Status = SweepStatus.Completed,
            CreatedAt = T0.AddSeconds(100), StartedAt = T0.AddSeconds(100), CompletedAt = T0.AddSeconds(200), Search = search,
        };
        TrialRecord Trial(int number, double? startedAfter, params string[] sets) => new()
        {
            Id = Guid.NewGuid(), SweepId = sweep.Id, Number = number, Strategy = "fine-tune-top",
            Hyperparameters = $$"""{"strategy":"fine-tune-top","cutoff":"layer3","lr":{{(number % 2 == 0 ? "0.01" : "0.001")}}}""",
            Plan = JsonSerializer.Serialize(new
            {
                trialId = "x",
                data = new { cutoffFeatures = new { train = sets[0] }, headFeatures = sets.Skip(1).Select((s, i) => (s, i)).ToDictionary(p => $"d{p.i}", p => p.s) },
            }),
            Status = startedAfter is null ? TrialStatus.Pending : TrialStatus.Completed,
            CreatedAt = sweep.CreatedAt, StartedAt = startedAfter is double s ? sweep.CreatedAt.AddSeconds(s) : null,
            BestMetric = startedAfter is null ? null : 0.5 + number / 10.0, Epochs = 9,
        };
        TrialRecord[] trials = [Trial(1, 2, "A", "C"), Trial(2, 5, "A", "A2", "C"), Trial(3, 1, "A2"), Trial(4, null, "A")];
        FeatureSetRecord Set(string key, string layer) => new()
        {
            Key = key, Model = "resnet18", WeightsHash = "w", Layer = layer, Pooling = "avg", Preprocessing = "p", DatasetId = "train",
            Dtype = "float32", Shape = "256", Status = FeatureSetStatus.Complete, ImageCount = 100,
        };
        FeatureShardRecord Shard(string key, int index, double seconds, DateTime at, FeatureShardStatus status = FeatureShardStatus.Complete) => new()
        {
            FeatureSetKey = key, Index = index, Seconds = seconds, Path = $"features/{key}/shard-{index}", Sha256 = "h", WorkerId = "w1",
            CreatedAt = at, Status = status,
        };
        SegmentRecord Segment(TrialRecord trial, int index, double startAfter, double endAfter, double seconds, SegmentStatus status = SegmentStatus.Completed) => new()
        {
            TrialId = trial.Id, Index = index, Status = status, Seconds = seconds,
            StartedAt = trial.StartedAt!.Value.AddSeconds(startAfter), CompletedAt = trial.StartedAt!.Value.AddSeconds(endAfter),
        };
        EpochMetricRecord Metric(TrialRecord trial, int epoch, double accuracy) => new()
        {
            TrialId = trial.Id, Epoch = epoch, Split = "validation", Accuracy = accuracy, Loss = 1 - accuracy,
        };
        DateTime extracted = T0.AddSeconds(50);
        return new SweepReportData
        {
            Sweep = sweep,
            Trials = trials,
            FeatureSets = [Set("A", "layer3"), Set("A2", "layer2"), Set("C", "avgpool")],
            FeatureShards =
            [
                Shard("A", 0, 2, extracted), Shard("A", 1, 3, extracted),
                Shard("A2", 0, 2, extracted), Shard("A2", 1, 3, extracted),
                Shard("C", 0, 4, T0.AddSeconds(-10)),
                Shard("C", 1, 99, extracted, FeatureShardStatus.Failed),
            ],
            Segments =
            [
                // Trial 1: 1 s from dispatch to its first segment, 2 s between its two segments.
                Segment(trials[0], 0, 1, 11, 9), Segment(trials[0], 1, 13, 20, 6),
                Segment(trials[1], 0, 0.5, 5, 4),
                // A failed attempt trained nothing that counts.
                Segment(trials[2], 0, 0, 100, 100, SegmentStatus.Failed),
            ],
            ValidationMetrics =
            [
                Metric(trials[0], 0, 0.5), Metric(trials[0], 2, 0.6), Metric(trials[0], 8, 0.7),
                Metric(trials[1], 0, 0.4), Metric(trials[1], 1, 0.45),
                Metric(trials[2], 0, 0.3),
            ],
            PreviousSweepCreatedAt = T0,
        };
    }

    /// <summary>Parses as a browser would, failing on any HTML parse error; each plot must also be well-formed XML, as SVG files are.</summary>
    internal static IHtmlDocument Parse(string html)
    {
        var parser = new HtmlParser();
        var errors = new List<string>();
        parser.Error += (_, e) =>
        {
            var error = (AngleSharp.Html.Dom.Events.HtmlErrorEvent)e;
            int at = Math.Clamp(error.Position.Position, 0, html.Length);
            // AngleSharp compares an SVG end tag with the open element's adjusted name (clipPath) before lowercasing it,
            // which the HTML standard does first: browsers, and the tree AngleSharp builds, close it correctly.
            if (error.Code == (int)HtmlParseError.TagClosingMismatch && html[Math.Max(0, at - 16)..Math.Min(html.Length, at + 16)].Contains("</clipPath>", StringComparison.Ordinal))
            {
                return;
            }
            errors.Add($"{error.Message} at line {error.Position.Line}: {html[Math.Max(0, at - 60)..Math.Min(html.Length, at + 20)]}");
        };
        IHtmlDocument document = parser.ParseDocument(html);
        errors.ShouldBeEmpty(string.Join("; ", errors.Take(5)));
        // That end tag did close its element: what follows a clip path is not inside it.
        document.All.Where(e => e.LocalName == "clipPath").ShouldAllBe(e => e.Children.All(child => child.LocalName == "rect" || child.LocalName == "path"));
        for (int at = html.IndexOf("<svg", StringComparison.Ordinal); at >= 0; at = html.IndexOf("<svg", at + 1, StringComparison.Ordinal))
        {
            int end = html.IndexOf("</svg>", at, StringComparison.Ordinal) + "</svg>".Length;
            XDocument.Parse(html[at..end]).Root!.Name.LocalName.ShouldBe("svg");
        }
        return document;
    }

    [Fact]
    public void Time_is_split_into_extraction_training_and_waiting_and_sharing_saves_the_repeated_extractions()
    {
        SweepTimeAccount time = SweepTimeAccount.Compute(Records());

        // A and A2 came from one pass (same dataset, shards, worker, seconds): 2 + 3 once; C is from the cache; a failed shard is no set.
        time.ExtractionSeconds.ShouldBe(5);
        time.TrainingSeconds.ShouldBe(9 + 6 + 4);
        time.QueuedSeconds.ShouldBe(2 + 5 + 1);
        time.DispatchGapSeconds.ShouldBe(1 + 2 + 0.5);
        var sets = time.FeatureSets.ToDictionary(s => s.Key);
        // Trial 4 never started: it used nothing.
        sets["A"].Trials.ShouldBe(2);
        sets["A2"].Trials.ShouldBe(2);
        sets["C"].Trials.ShouldBe(2);
        sets["C"].ExtractedForThisSweep.ShouldBeFalse();
        sets["A"].ExtractedForThisSweep.ShouldBeTrue();
        sets["A"].SavedSeconds.ShouldBe(5);
        sets["C"].SavedSeconds.ShouldBe(4);
        time.SharingSavedSeconds.ShouldBe(5 + 5 + 4);
    }

    [Fact]
    public void A_set_used_by_one_trial_saves_nothing()
    {
        SweepReportData data = Records();
        SweepTimeAccount time = SweepTimeAccount.Compute(data with { Trials = [.. data.Trials.Where(t => t.Number == 3)] });

        time.FeatureSets.Single(s => s.Key == "A2").SavedSeconds.ShouldBe(0);
        time.SharingSavedSeconds.ShouldBe(0);
    }

    [Fact]
    public void An_asha_report_has_its_four_plots_and_escapes_what_the_user_wrote()
    {
        const string name = "<script>alert('x')</script> & <b>co</b>";
        string html = SweepReportWriter.Render(Records(name));

        IHtmlDocument document = Parse(html);
        document.QuerySelectorAll("script").Length.ShouldBe(0);
        document.QuerySelector("h1")!.TextContent.ShouldBe(name);
        document.Title.ShouldBe($"Sweep {name}: report");
        document.QuerySelectorAll("svg").Length.ShouldBe(4);
        document.QuerySelector("svg#asha-rungs")!.TextContent.ShouldContain("rung (epochs trained)");
        document.QuerySelector("svg#time")!.TextContent.ShouldContain("saved by sharing");
        document.QuerySelector("#seconds-saved-by-sharing")!.TextContent.ShouldBe("14.0 s");
        // Started trials are ranked, one row each (the one never started too, as pending).
        document.QuerySelectorAll("table.leaderboard tbody tr").Length.ShouldBe(4);
        // Every plot names its clip paths alike; in one page each must be its own.
        string[] ids = [.. document.QuerySelectorAll("svg [id]").Select(e => e.Id!)];
        ids.ShouldContain(id => id.StartsWith("asha-rungs-", StringComparison.Ordinal));
        ids.Distinct().Count().ShouldBe(ids.Length);
    }

    [Fact]
    public void A_grid_sweep_says_it_has_no_rungs()
    {
        string html = SweepReportWriter.Render(Records(search: """{"method":"grid","parallelism":2}"""));

        IHtmlDocument document = Parse(html);
        document.QuerySelectorAll("svg").Length.ShouldBe(3);
        document.QuerySelector("svg#asha-rungs").ShouldBeNull();
        document.Body!.TextContent.ShouldContain("not ASHA");
    }
}
