using Cluster.Coordinator.Search;
using Cluster.Coordinator.Specs;
using Cluster.GpuWorker.Models;

namespace Cluster.Coordinator.Planning;

/// <summary>A trial's weights: what keys carry (builtin:NAME, random:SEED, sha256:HEX) and, for a file, where it is and its sha256.</summary>
public sealed record TrialWeights(string Hash, string? FilePath, string? Sha256);

/// <summary>One trial of a laid-out sweep: its configuration of the search space and the feature sets it trains on.</summary>
/// <param name="Number">The trial's number: its place among the configurations that can train (the search method's numbering).</param>
/// <param name="Configuration">Its configuration number in the search space (as `sweep plan` lists those left out).</param>
public sealed record SweepTrialLayout(int Number, int Configuration, TrialChoice Choice, TrialWeights Weights, IReadOnlyList<(FeatureNeed Need, ExtractionRequest Request)> Features);

/// <summary>A configuration the grid makes that cannot train (fine-tune-top cut at the global pool), left out with the reason.</summary>
public sealed record SkippedConfiguration(int Configuration, TrialChoice Choice, string Reason);

/// <summary>What a spec turns into before anything is sent: its search, its datasets, its trials and the feature sets they share.</summary>
public sealed record SweepLayout(SearchPlan Search, TrialDatasets Datasets, IReadOnlyList<SweepTrialLayout> Trials, IReadOnlyList<SkippedConfiguration> Skipped)
{
    /// <summary>How `strategy: auto` was resolved: one decision per model and weights it met (empty without auto).</summary>
    public IReadOnlyList<AutoDecision> AutoDecisions { get; init; } = [];

    /// <summary>The distinct extractions, each once however many trials share its key, in the order trials first need them.</summary>
    public IReadOnlyList<ExtractionRequest> DistinctExtractions =>
        [.. Trials.SelectMany(t => t.Features.Select(f => f.Request)).DistinctBy(r => r.Key.Value)];
}

/// <summary>
/// Lays out a sweep for `sweep plan` and `sweep run` alike: every configuration the search may train, checked as the
/// workers would check it (one left out is listed, not fatal; the sweep fails only when none is left), with its
/// weights' identity and the extraction each feature set needs, keyed as the cache keys them. Reads the weights files to
/// hash them; writes nothing.
/// </summary>
public static class SweepPlanner
{
    /// <param name="scanDatasets">Reads the spec's datasets: called once the checks that need no data have passed, so a
    /// bad value is reported before a missing folder, and before any folder is read. A spec with `strategy: auto` needs
    /// the data to decide, so its datasets are read first.</param>
    /// <param name="similarity">Measures (or reads from its cache) the data's similarity to the pretraining domain for
    /// `strategy: auto`; null: measured without a cache.</param>
    public static async Task<SweepLayout> LayoutAsync(SweepSpec spec, Func<CancellationToken, Task<TrialDatasets>> scanDatasets, CancellationToken ct,
        DomainSimilarityProbe? similarity = null)
    {
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(scanDatasets);
        SearchPlan search = SearchPlan.For(spec);
        var kept = new List<(int Configuration, TrialChoice Choice)>();
        var skipped = new List<SkippedConfiguration>();
        var identities = new Dictionary<string, (int Configuration, TrialChoice Choice)>(StringComparer.Ordinal);
        var weights = new Dictionary<(string Model, string? File), TrialWeights>();
        var decisions = new Dictionary<(string Model, string Weights), AutoDecision>();
        TrialDatasets? datasets = null;
        for (int configuration = 0; configuration < search.Configurations; configuration++)
        {
            ct.ThrowIfCancellationRequested();
            TrialChoice choice = search.Configuration(configuration);
            bool auto = choice.Strategy == SpecNames.Auto;
            if (auto)
            {
                // The decided strategy and cutoff replace auto before anything else sees the choice: checks, merging,
                // feature sets and storage planning then treat it as if the spec had named them.
                datasets ??= await scanDatasets(ct);
                var key = (choice.Model, choice.Weights.Text);
                if (!decisions.TryGetValue(key, out AutoDecision? decision))
                {
                    TrialWeights trialWeights = await WeightsAsync(spec, choice, weights, ct);
                    decisions[key] = decision = await DecideAsync(spec, choice, datasets, trialWeights.Hash, similarity ?? new DomainSimilarityProbe(null), ct);
                }
                choice = choice with { Strategy = decision.Pick.Strategy, Cutoff = decision.Pick.Cutoff };
            }
            try
            {
                TrialPlanner.Check(spec, choice);
            }
            catch (SpecException e)
            {
                skipped.Add(new SkippedConfiguration(configuration, choice, e.Message));
                continue;
            }
            string identity = TrialPlanner.Identity(choice);
            if (identities.TryGetValue(identity, out var same))
            {
                IReadOnlyDictionary<string, object> mine = SweepSpec.Params(choice), theirs = SweepSpec.Params(same.Choice);
                string[] differing = [.. TrialPlanner.UnusedFields(choice).Where(f => !Equals(mine.GetValueOrDefault(f), theirs.GetValueOrDefault(f)))];
                string why = differing.Length > 0 ? $"{choice.Strategy} does not use {string.Join(", ", differing)}" : $"strategy auto chose {choice.Strategy}{(choice.Cutoff is null ? "" : $" at {choice.Cutoff}")}";
                skipped.Add(new SkippedConfiguration(configuration, choice, $"the same trial as configuration {same.Configuration}: {why}"));
                continue;
            }
            identities[identity] = (configuration, choice);
            kept.Add((configuration, choice));
        }
        if (kept.Count == 0)
        {
            // One configuration that cannot train is the spec's error, with its line; with several, the first says why.
            throw skipped.Count == 1 ? new SpecException(skipped[0].Reason) : new SpecException($"no trial of the {skipped.Count} the spec describes can train; the first: {skipped[0].Reason}");
        }

        datasets ??= await scanDatasets(ct);
        var layers = new Dictionary<(string Model, string Tap), string>();
        var trials = new List<SweepTrialLayout>();
        foreach ((int configuration, TrialChoice choice) in kept)
        {
            TrialWeights trialWeights = await WeightsAsync(spec, choice, weights, ct);
            // The data checks (one class, an empty validation split) of every trial, as the workers would make them: a
            // problem with the data is the spec's, so it stops the sweep with its line.
            TrialPlanner.Plan(spec, choice, datasets, "random", trialWeights.Hash, Guid.Empty, trials.Count);
            string weightsName = WeightsName(choice, trialWeights);
            var features = TrialPlanner.FeatureNeeds(choice, datasets)
                .Select(need => (need, TrialPlanner.ExtractionFor(need, choice, Canonical(layers, choice.Model, need.Layer), weightsName, trialWeights.Hash)))
                .ToList();
            trials.Add(new SweepTrialLayout(trials.Count, configuration, choice, trialWeights, features));
        }
        return new SweepLayout(search, datasets, trials, skipped) { AutoDecisions = [.. decisions.Values] };
    }

    /// <summary>
    /// One cell of the decision table for a model and its weights: the training set's images per class and its
    /// similarity (the spec's `auto.similarity`, else measured). A network without batch norms cannot be measured: the
    /// spec's error, naming the strategy's line (random weights without a given similarity the parser has refused).
    /// </summary>
    private static async Task<AutoDecision> DecideAsync(SweepSpec spec, TrialChoice choice, TrialDatasets datasets, string weightsHash,
        DomainSimilarityProbe probe, CancellationToken ct)
    {
        int line = spec.Strategy.Line;
        (int trainImages, int classes, double perClass) = AutoStrategy.Size(spec, datasets);
        SimilarityMeasurement? measurement = null;
        bool cached = false;
        double score;
        if (spec.Auto.Similarity is double given)
        {
            score = given;
        }
        else
        {
            try
            {
                (measurement, cached) = await probe.MeasureAsync(choice, datasets.Train, weightsHash, ct);
            }
            catch (InvalidDataException e)
            {
                throw new SpecException($"{spec.Source} line {spec.Dataset.Line}: dataset.train '{spec.Dataset.Train.Text}': strategy auto's similarity sample: {e.Message}", e);
            }
            score = measurement?.Score ?? throw new SpecException(
                $"{spec.Source} line {line}: strategy auto cannot measure similarity on {choice.Model}: it has no batch norm, whose recorded statistics the measure compares with; " +
                "set auto.similarity (e.g. 1 for similar, 0 for different), or name a strategy");
        }
        AutoPick pick = AutoStrategy.Decide(perClass, score, spec.Auto, ModelCatalog.Find(choice.Model));
        return new AutoDecision(choice.Model, choice.Weights.Text, ModelCatalog.Find(choice.Model).InputSize, trainImages, classes, perClass, score, measurement, cached,
            spec.Auto.SimilarAbove, spec.Auto.BigFrom, pick);
    }

    /// <summary>What a trial's messages name as its weights before staging: builtin, random, or the file (staged later, its path replaced).</summary>
    private static string WeightsName(TrialChoice choice, TrialWeights weights) =>
        weights.FilePath ?? (choice.Weights.Kind == SpecWeightsKind.Builtin ? "builtin" : "random");

    private static string Canonical(Dictionary<(string, string), string> layers, string model, string tap)
    {
        if (!layers.TryGetValue((model, tap), out string? layer))
        {
            using Backbone built = ModelCatalog.Find(model).Build();
            layers[(model, tap)] = layer = built.Steps[built.ResolveTap(tap)].Name;
        }
        return layer;
    }

    /// <summary>The weights' identity; a file is checked against its model and hashed once per sweep.</summary>
    private static async Task<TrialWeights> WeightsAsync(SweepSpec spec, TrialChoice choice, Dictionary<(string, string?), TrialWeights> known, CancellationToken ct)
    {
        if (WeightsStaging.UnstagedHash(choice) is string unstaged)
        {
            return new TrialWeights(unstaged, null, null);
        }
        var key = (choice.Model, choice.Weights.FullPath);
        if (!known.TryGetValue(key, out TrialWeights? weights))
        {
            string sha256 = (await WeightsStaging.CheckSpecFileAsync(spec, choice, ct))!;
            known[key] = weights = new TrialWeights(WeightsStaging.HashName(sha256), choice.Weights.FullPath, sha256);
        }
        return weights;
    }
}
