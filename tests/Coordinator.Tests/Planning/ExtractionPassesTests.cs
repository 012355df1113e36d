using Cluster.Contracts.Features;
using Cluster.Coordinator.Planning;
using Cluster.Storage.Datasets;
using Shouldly;

namespace Cluster.Coordinator.Tests.Planning;

/// <summary>
/// Which shard jobs a set of planned feature sets becomes: one job per pass over the images and shard, the taps of
/// every set that pass computes in it (and only sets missing that shard), never across datasets, models, weights,
/// input sizes or `--no-share` scopes.
/// </summary>
public sealed class ExtractionPassesTests
{
    private static readonly DatasetManifest Train = Dataset("train", 250);
    private static readonly DatasetManifest Test = Dataset("test", 100);

    private static DatasetManifest Dataset(string name, int images) =>
        new(Enumerable.Range(0, images).Select(i => new DatasetEntry($"{name}/c{i % 2}/{i}.png", $"c{i % 2}", 100, Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes($"{name}/{i}"))))), [], $"/data/{name}");

    private static ExtractionRequest Request(string layer, DatasetManifest? dataset = null, string model = "resnet18-imagenet", string pooling = "avg",
        int? inputSize = 64, string? scope = null, string storage = "fp32") =>
        new(dataset ?? Train, model, layer, pooling, $"imagenet@{inputSize}", "fp32", $"builtin:{model}", null, ShardSize: 100, BatchSize: 32,
            InputSize: inputSize, StorageDtype: storage, Scope: scope);

    /// <summary>The jobs the planner makes for a new set (every shard), or for a set missing only <paramref name="missing"/>.</summary>
    private static (ExtractionRequest, IReadOnlyList<ExtractFeatures>) Planned(ExtractionRequest request, params int[] missing)
    {
        int images = request.Dataset.Entries.Count;
        int shards = (images + request.ShardSize - 1) / request.ShardSize;
        int[] indices = missing.Length > 0 ? missing : [.. Enumerable.Range(0, shards)];
        return (request, [.. indices.Select(i => new ExtractFeatures
        {
            FeatureSetKey = request.Key.Value, ShardIndex = i, DatasetId = request.Dataset.Id, RowStart = (long)i * request.ShardSize,
            RowCount = Math.Min(request.ShardSize, images - (i * request.ShardSize)), Model = request.Model, WeightsHash = request.WeightsHash,
            Layer = request.Layer, Pooling = request.Pooling, Precision = request.Precision, BatchSize = request.BatchSize,
            InputSize = request.InputSize, StorageDtype = request.StorageDtype,
        })]);
    }

    [Fact]
    public void Four_cutoffs_of_one_backbone_are_one_pass_each_shard_one_job_carrying_the_four_taps()
    {
        ExtractionRequest[] cutoffs = [Request("layer2", pooling: "none"), Request("layer3"), Request("layer4", storage: "bf16"), Request("avgpool")];
        IReadOnlyList<ExtractFeatures> jobs = ExtractionPasses.Merge(cutoffs.Select(r => Planned(r)));

        jobs.Count.ShouldBe(3, "250 images in shards of 100: three shards, each once");
        ExtractionPasses.Count(cutoffs).ShouldBe(1);
        foreach (ExtractFeatures job in jobs)
        {
            job.AllTaps().Select(t => t.FeatureSetKey).ShouldBe(cutoffs.Select(r => r.Key.Value), "every set's own key, in the order asked");
            job.AllTaps().Select(t => (t.Layer, t.Pooling, t.StorageDtype))
                .ShouldBe([("layer2", "none", "fp32"), ("layer3", "avg", "fp32"), ("layer4", "avg", "bf16"), ("avgpool", "avg", "fp32")]);
        }
        jobs.Select(j => (j.ShardIndex, j.RowStart, j.RowCount)).ShouldBe([(0, 0L, 100), (1, 100L, 100), (2, 200L, 50)]);
    }

    [Fact]
    public void A_resumed_set_joins_only_the_shards_it_lacks()
    {
        // layer3 was extracted before but for shard 1; layer4 is new.
        IReadOnlyList<ExtractFeatures> jobs = ExtractionPasses.Merge([Planned(Request("layer3"), 1), Planned(Request("layer4"))]);

        jobs.Count.ShouldBe(3);
        jobs.Single(j => j.ShardIndex == 0).AllTaps().Select(t => t.Layer).ShouldBe(["layer4"]);
        jobs.Single(j => j.ShardIndex == 1).AllTaps().Select(t => t.Layer).ShouldBe(["layer3", "layer4"]);
        jobs.Single(j => j.ShardIndex == 2).AllTaps().Select(t => t.Layer).ShouldBe(["layer4"]);
    }

    [Fact]
    public void Different_data_models_input_sizes_or_no_share_scopes_are_separate_passes()
    {
        ExtractionRequest[] requests =
        [
            Request("layer3"), Request("layer4"),                      // one pass
            Request("layer3", dataset: Test),                          // other images
            Request("layer3", model: "resnet50-imagenet"),             // other network
            Request("layer3", inputSize: 224),                         // other decode
            Request("layer3", scope: "trial-a"), Request("layer4", scope: "trial-a"), // --no-share: its own pass
            Request("layer3", scope: "trial-b"),
        ];
        IReadOnlyList<ExtractFeatures> jobs = ExtractionPasses.Merge(requests.Select(r => Planned(r)));

        ExtractionPasses.Count(requests).ShouldBe(6);
        jobs.Count.ShouldBe((5 * 3) + 1, "five passes over the three shards of train, one over the one shard of test");
        jobs.Where(j => j.MoreTaps.Count > 0).Select(j => j.AllTaps().Count).ShouldAllBe(n => n == 2);
        jobs.Count(j => j.MoreTaps.Count > 0).ShouldBe(6, "the two two-tap passes, each on three shards");
        // The scopes never meet: trial-a's layer4 rides with trial-a's layer3 only.
        ExtractFeatures scopedA = jobs.First(j => j.FeatureSetKey == requests[5].Key.Value);
        scopedA.MoreTaps.Select(t => t.FeatureSetKey).ShouldBe([requests[6].Key.Value]);
        jobs.SelectMany(j => j.AllTaps()).Count().ShouldBe((requests.Length - 1) * 3 + 1, "every set's every shard, once");
    }

    [Fact]
    public void A_set_asked_twice_is_in_its_pass_once()
    {
        ExtractionRequest layer3 = Request("layer3");
        IReadOnlyList<ExtractFeatures> jobs = ExtractionPasses.Merge([Planned(layer3), Planned(layer3), Planned(Request("layer4"))]);
        jobs.ShouldAllBe(j => j.AllTaps().Count == 2);
    }
}
