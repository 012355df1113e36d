using System.Globalization;
using System.Text.Json;
using Cluster.Contracts.Training;
using Cluster.GpuWorker.Models;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Microsoft.EntityFrameworkCore;

namespace Cluster.Coordinator.Planning;

/// <summary>
/// What the materialization planner needs that is not pure: the candidates of a laid-out sweep (each distinct feature
/// set with its size per image, from the tap's traced shape, and what recomputing it would cost), and the storage's
/// facts from the database (every stored set's bytes and last use, and the sets running sweeps still need). The
/// coordinator service reads the same facts before it evicts.
/// </summary>
public static class StorageBudget
{
    private static readonly JsonSerializerOptions s_json = new(JsonSerializerDefaults.Web);

    /// <summary>A set asked for this recently is kept: the sweep that asked may still be extracting its other sets, and
    /// its trials (which pin its sets) are recorded only when it is submitted.</summary>
    public static readonly TimeSpan KeepAfterAsked = TimeSpan.FromHours(1);

    /// <summary>Each distinct feature set of <paramref name="layout"/>, with what storing and recomputing it cost.</summary>
    public static IReadOnlyList<PrefixCandidate> Candidates(SweepLayout layout)
    {
        ArgumentNullException.ThrowIfNull(layout);
        var shapes = new Dictionary<(string Model, int InputSize), Dictionary<string, long[]>>();
        var candidates = new Dictionary<string, PrefixCandidate>(StringComparer.Ordinal);
        foreach (SweepTrialLayout trial in layout.Trials)
        {
            foreach ((FeatureNeed need, ExtractionRequest request) in trial.Features)
            {
                string key = request.Key.Value;
                int rows = need.Dataset.Entries.Count;
                bool mustStore = trial.Choice.Strategy == "feature-extractor";
                long recompute = mustStore ? 0 : (long)rows * PassesOver(need, trial, layout.Datasets);
                if (candidates.TryGetValue(key, out PrefixCandidate? known))
                {
                    candidates[key] = known with
                    {
                        MustStore = known.MustStore || mustStore, RecomputeImages = known.RecomputeImages + recompute, Trials = known.Trials + 1,
                    };
                    continue;
                }
                long[] shape = TapShape(shapes, trial.Choice.Model, trial.Choice.InputSize, request.Layer);
                long values = need.Pooling == "none" ? shape.Aggregate(1L, (a, b) => a * b) : shape[0];
                var keys = new[] { "fp32", "bf16", "fp16" }.ToDictionary(d => d, d => (request with { StorageDtype = d }).Key.Value, StringComparer.Ordinal);
                candidates[key] = new PrefixCandidate(key, request.Model, request.Layer, request.Pooling, need.Dataset.Id, rows, values,
                    request.StorageDtype, mustStore, recompute, 1, keys);
            }
        }
        return [.. candidates.Values];
    }

    /// <summary>
    /// How often a trial runs its images through the prefix when it does not train on stored activations: every epoch
    /// of its stage (fine-tune-top's head stage uses the pooled features, the rest the cutoff's) for the training data
    /// and a validation split of it, once for a test set (scored when the trial ends).
    /// </summary>
    private static int PassesOver(FeatureNeed need, SweepTrialLayout trial, TrialDatasets datasets)
    {
        if (need.Dataset.Id == datasets.Test?.Id && need.Dataset.Id != datasets.Train.Id)
        {
            return 1;
        }
        int headEpochs = Math.Min(trial.Choice.HeadEpochs, trial.Choice.Epochs);
        return Math.Max(1, need.ForHead ? headEpochs : trial.Choice.Epochs - headEpochs);
    }

    private static long[] TapShape(Dictionary<(string, int), Dictionary<string, long[]>> shapes, string model, int inputSize, string layer)
    {
        if (!shapes.TryGetValue((model, inputSize), out Dictionary<string, long[]>? byStep))
        {
            using Backbone built = ModelCatalog.Find(model).Build();
            byStep = built.TraceShapes(inputSize).ToDictionary(s => s.Step.Name, s => s.Shape, StringComparer.Ordinal);
            shapes[(model, inputSize)] = byStep;
        }
        return byStep[layer];
    }

    /// <summary>
    /// The storage as the budget sees it: every feature set with files (its bytes from its rows, shape and dtype; the
    /// shards' safetensors headers are a few hundred bytes and left out), and the keys no eviction may touch: sets the
    /// unfinished trials of running sweeps train on, sets being extracted, and sets asked for within <see cref="KeepAfterAsked"/>.
    /// </summary>
    public static async Task<StorageFacts> LoadFactsAsync(ClusterDbContext db, DateTime now, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(db);
        var sets = await db.FeatureSets.AsNoTracking()
            .Select(s => new { s.Key, s.Status, s.Shape, s.Dtype, s.ImageCount, s.ExtractedCount, s.LastUsedAt })
            .ToListAsync(ct);
        var pinned = new HashSet<string>(StringComparer.Ordinal);
        var stored = new List<StoredSet>(sets.Count);
        DateTime recent = now - KeepAfterAsked;
        foreach (var set in sets)
        {
            int rows = set.Status == FeatureSetStatus.Complete ? set.ImageCount : set.ExtractedCount;
            stored.Add(new StoredSet(set.Key, rows * ValuesOf(set.Shape) * (set.Dtype == "float32" ? 4 : 2), set.Status == FeatureSetStatus.Complete, rows, set.LastUsedAt));
            if (set.Status is FeatureSetStatus.Extracting or FeatureSetStatus.Pending || set.LastUsedAt > recent)
            {
                pinned.Add(set.Key);
            }
        }
        List<string?> plans = await db.Trials.AsNoTracking()
            .Where(t => t.Status == TrialStatus.Pending || t.Status == TrialStatus.WaitingForFeatures || t.Status == TrialStatus.Running)
            .Join(db.Sweeps.Where(s => s.Status == SweepStatus.Planned || s.Status == SweepStatus.Running), t => t.SweepId, s => s.Id, (t, _) => t.Plan)
            .ToListAsync(ct);
        foreach (string? plan in plans)
        {
            if (plan is not null && JsonSerializer.Deserialize<PlannedTrial>(plan, s_json)?.Data is TrialData data)
            {
                pinned.UnionWith(data.FeatureSetKeys());
            }
        }
        return new StorageFacts(stored, pinned);
    }

    /// <summary>Values per row of a recorded shape ("512", "256x14x14"); 0 while no shard has said it.</summary>
    private static long ValuesOf(string shape) =>
        string.IsNullOrEmpty(shape) ? 0 : shape.Split('x').Aggregate(1L, (a, d) => a * long.Parse(d, CultureInfo.InvariantCulture));
}
