using Cluster.Coordinator.Planning;
using Cluster.Coordinator.Specs;
using Cluster.GpuWorker.Models;
using Shouldly;

namespace Cluster.Coordinator.Tests.Planning;

/// <summary>The decision table on synthetic sizes and similarities: every cell, and both thresholds at their boundaries.</summary>
public sealed class AutoStrategyTests
{
    private static readonly AutoSpec s_thresholds = new(SimilarAbove: 0.88, BigFrom: 1200, Similarity: null, Line: 0);
    private static readonly ArchitectureInfo s_resnet = ModelCatalog.Find(BuiltInModels.ResNet18ImageNet);

    [Theory]
    [InlineData(90, 0.95, "small/similar", "feature-extractor", "avgpool")]
    [InlineData(90, 0.78, "small/different", "feature-extractor", "layer2")]
    [InlineData(5400, 0.95, "big/similar", "fine-tune-all", null)]
    [InlineData(5400, 0.78, "big/different", "from-scratch", null)]
    public void Each_cell_of_the_table_maps_to_its_strategy(double perClass, double similarity, string cell, string strategy, string? cutoff)
    {
        AutoPick pick = AutoStrategy.Decide(perClass, similarity, s_thresholds, s_resnet);

        (pick.Cell, pick.Strategy, pick.Cutoff).ShouldBe((cell, strategy, cutoff));
    }

    [Theory]
    [InlineData(1199.9, false)]
    [InlineData(1200, true)]
    [InlineData(1201, true)]
    public void Data_is_big_from_the_threshold_on(double perClass, bool big)
    {
        AutoStrategy.Decide(perClass, 0.95, s_thresholds, s_resnet).Big.ShouldBe(big);
    }

    [Theory]
    [InlineData(0.88, false)]
    [InlineData(0.8800001, true)]
    [InlineData(0.0, false)]
    [InlineData(1.0, true)]
    public void Data_is_similar_only_above_the_threshold(double similarity, bool similar)
    {
        AutoStrategy.Decide(90, similarity, s_thresholds, s_resnet).Similar.ShouldBe(similar);
    }

    [Fact]
    public void Overridden_thresholds_move_the_cell()
    {
        AutoPick pick = AutoStrategy.Decide(90, 0.78, s_thresholds with { SimilarAbove = 0.5, BigFrom = 50 }, s_resnet);

        (pick.Cell, pick.Strategy).ShouldBe(("big/similar", "fine-tune-all"));
    }

    [Theory]
    [InlineData("resnet50", "layer2")]
    [InlineData("vgg16", "block3_pool")]
    [InlineData("alexnet", "pool2")]
    public void The_first_layers_end_at_the_middle_stage_of_each_family(string model, string tap)
    {
        AutoStrategy.EarlyTap(ModelCatalog.Find(model)).ShouldBe(tap);
    }

    [Fact]
    public void A_family_without_named_stages_takes_the_step_halfway_to_the_head()
    {
        ArchitectureInfo mobilenet = ModelCatalog.Find("mobilenet_v2");
        string tap = AutoStrategy.EarlyTap(mobilenet);

        using Backbone built = mobilenet.Build(new BackboneOptions(IncludeTop: false));
        int step = built.ResolveTap(tap);
        step.ShouldBeGreaterThan(0);
        step.ShouldBeLessThan(built.ResolveTap(mobilenet.DefaultTap));
    }
}
