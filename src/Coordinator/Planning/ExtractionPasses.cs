using Cluster.Contracts.Features;

namespace Cluster.Coordinator.Planning;

/// <summary>
/// What makes one pass over a dataset's images: everything a feature set's key holds except the tap, its pooling and
/// its storage dtype (the image decode and the backbone's run are the same for all of them), with the scope (a
/// `--no-share` trial's sets are never computed with another's).
/// </summary>
public sealed record ExtractionPass(
    string DatasetId, string Model, string WeightsHash, string? WeightsPath, string Preprocessing, int? InputSize, string Precision,
    int ShardSize, int BatchSize, string? Scope)
{
    public static ExtractionPass Of(ExtractionRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        return new(request.Dataset.Id, request.Model, request.WeightsHash, request.WeightsPath, request.Preprocessing, request.InputSize,
            request.Precision, request.ShardSize, request.BatchSize, request.Scope);
    }
}

/// <summary>
/// Vista's staged materialization, for our shards: the feature sets of one <see cref="ExtractionPass"/> get each
/// shard in one <see cref="ExtractFeatures"/> job carrying all their taps (<see cref="ExtractFeatures.MoreTaps"/>), so
/// a sweep over layer2, layer3, layer4 and avgpool decodes and runs the backbone once per image, not four times. The
/// cache stays keyed per tap: each set has its own shard files and rows, and a later sweep reuses any of them.
/// </summary>
public static class ExtractionPasses
{
    /// <summary>
    /// The jobs to send for sets planned separately (each with the shard jobs it still misses): one job per pass and
    /// shard, the taps of the sets missing that shard in it, in the order the sets were asked for. A set whose shard is
    /// already recorded is not in that shard's job (a resumed set adds only what it lacks).
    /// </summary>
    public static IReadOnlyList<ExtractFeatures> Merge(IEnumerable<(ExtractionRequest Request, IReadOnlyList<ExtractFeatures> Jobs)> plans)
    {
        ArgumentNullException.ThrowIfNull(plans);
        var merged = new List<ExtractFeatures>();
        foreach (var pass in plans.GroupBy(p => ExtractionPass.Of(p.Request)))
        {
            // Rows as well as the index: a set created earlier keeps its own shard layout, and only equal rows share a pass.
            foreach (var shard in pass.SelectMany(p => p.Jobs).GroupBy(j => (j.ShardIndex, j.RowStart, j.RowCount)).OrderBy(g => g.Key.ShardIndex))
            {
                ExtractFeatures first = shard.First();
                var more = shard.Skip(1).SelectMany(j => j.AllTaps())
                    .Where(t => t.FeatureSetKey != first.FeatureSetKey)
                    .DistinctBy(t => t.FeatureSetKey)
                    .ToList();
                merged.Add(more.Count == 0 ? first : first with { MoreTaps = more });
            }
        }
        return merged;
    }

    /// <summary>How many passes over the images a set of requests needs: one per distinct pass (what `sweep plan` prints).</summary>
    public static int Count(IEnumerable<ExtractionRequest> requests) => requests.Select(ExtractionPass.Of).Distinct().Count();
}
