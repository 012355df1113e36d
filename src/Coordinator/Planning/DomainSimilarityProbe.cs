using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Cluster.Coordinator.Specs;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Similarity;
using Cluster.GpuWorker.Weights;
using Cluster.Storage.Datasets;
using Cluster.Storage.Files;

namespace Cluster.Coordinator.Planning;

/// <summary>
/// Measures, at plan time, how similar a spec's training data is to its model's pretraining domain
/// (<see cref="BatchNormSimilarity"/>), on a stratified, seeded sample, and caches the score under the storage root:
/// `similarity/&lt;dataset id&gt;/&lt;hash16&gt;.json`, keyed by the dataset (its id is its content), the model, the
/// weights' hash, the preprocessing and the sample size, so a second `sweep plan` or a `sweep run` reads it back.
/// </summary>
public sealed class DomainSimilarityProbe(FileStore? store)
{
    /// <summary>The sample's seed: fixed, so the cached score does not depend on the spec's seed.</summary>
    private const int SampleSeed = 12;

    private static readonly JsonSerializerOptions s_json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, WriteIndented = true };

    /// <returns>The measurement, and whether it came from the cache; null measurement: the network has no batch norm.</returns>
    public async Task<(SimilarityMeasurement? Measurement, bool Cached)> MeasureAsync(
        TrialChoice choice, DatasetManifest train, string weightsHash, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(choice);
        ArgumentNullException.ThrowIfNull(train);
        ArchitectureInfo architecture = ModelCatalog.Find(choice.Model);
        // At the native size, whatever the trials' input size: the question is whether the images are like the
        // pretraining images, and a network shown photos at 64 pixels is as far from its statistics as it is on
        // Fashion-MNIST (docs/architecture.md has the figures).
        Preprocessing preprocessing = architecture.Preprocessing;
        IReadOnlyList<string> sample = Sample(train, BatchNormSimilarity.MaxSampleImages);
        string key = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(
            $"{choice.Model}\n{weightsHash}\n{preprocessing.Name}\n{sample.Count}\n{SampleSeed}")))[..16];
        string path = $"similarity/{train.Id}/{key}.json";
        if (store is not null && store.Exists(path))
        {
            await using Stream cached = store.OpenRead(path);
            CachedScore? score = await JsonSerializer.DeserializeAsync<CachedScore>(cached, s_json, ct);
            if (score is not null)
            {
                return (score.Layers == 0 ? null : new SimilarityMeasurement(score.Score, score.Divergence, score.Images, score.Layers), true);
            }
        }
        DomainSimilarity? measured = await Task.Run(() => Measure(choice, architecture, preprocessing, sample), ct);
        if (store is not null)
        {
            var record = new CachedScore(choice.Model, weightsHash, preprocessing.Name, measured?.Score ?? 0, measured?.Divergence ?? 0,
                measured?.Images ?? 0, measured?.Layers ?? 0);
            await store.WriteAllBytesAsync(path, JsonSerializer.SerializeToUtf8Bytes(record, s_json), ct);
        }
        return (measured is null ? null : new SimilarityMeasurement(measured.Score, measured.Divergence, measured.Images, measured.Layers), false);
    }

    /// <summary>
    /// Up to <paramref name="count"/> images, as evenly over the classes as they allow (each class shuffled with a fixed
    /// seed, then taken in turn), as full paths; the order is the manifest's, so the same dataset gives the same sample.
    /// </summary>
    public static IReadOnlyList<string> Sample(DatasetManifest train, int count)
    {
        ArgumentNullException.ThrowIfNull(train);
        var random = new Random(SampleSeed);
        List<Queue<DatasetEntry>> classes = [.. train.Entries.GroupBy(e => e.Label, StringComparer.Ordinal)
            .OrderBy(g => g.Key, StringComparer.Ordinal)
            .Select(g => new Queue<DatasetEntry>(g.OrderBy(_ => random.Next())))];
        var picked = new List<string>();
        while (picked.Count < count && classes.Any(q => q.Count > 0))
        {
            foreach (Queue<DatasetEntry> queue in classes.Where(q => q.Count > 0))
            {
                if (picked.Count == count)
                {
                    break;
                }
                picked.Add(Path.Combine(train.Root, queue.Dequeue().Path));
            }
        }
        return picked;
    }

    private static DomainSimilarity? Measure(TrialChoice choice, ArchitectureInfo architecture, Preprocessing preprocessing, IReadOnlyList<string> sample)
    {
        using Backbone backbone = architecture.Build();
        if (choice.Weights.Kind == SpecWeightsKind.File)
        {
            using StateDict weights = StateDictFile.Load(choice.Weights.FullPath!);
            WeightsLoader.Apply(backbone, weights, strict: true);
        }
        return BatchNormSimilarity.Measure(backbone, preprocessing, sample);
    }

    /// <summary>The cache file: what was measured, and on what (Layers 0: the network has no batch norm).</summary>
    private sealed record CachedScore(string Model, string Weights, string Preprocessing, double Score, double Divergence, int Images, int Layers);
}
