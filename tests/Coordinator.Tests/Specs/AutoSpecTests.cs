using Cluster.Coordinator.Specs;
using Shouldly;

namespace Cluster.Coordinator.Tests.Specs;

/// <summary>`strategy: auto`'s `auto` field: its thresholds, and each bad value one line naming where it is.</summary>
public sealed class AutoSpecTests
{
    private static readonly string s_base = Path.Combine(Path.GetTempPath(), "specs");

    /// <summary>The three lines every spec needs, then strategy auto on line 4; the first extra line is line 5.</summary>
    private static string Spec(params string[] lines) =>
        string.Join('\n', new[] { "name: test", "dataset:", "  train: train", "strategy: auto" }.Concat(lines)) + "\n";

    private static SweepSpec Parse(string yaml) => SweepSpec.Parse(yaml, "spec.yaml", s_base);

    private static string Error(string yaml)
    {
        string message = Should.Throw<SpecException>(() => Parse(yaml)).Message;
        message.ShouldNotContain("\n");
        return message;
    }

    [Fact]
    public void Without_an_auto_field_the_calibrated_thresholds_apply()
    {
        AutoSpec auto = Parse(Spec()).Auto;

        (auto.SimilarAbove, auto.BigFrom, auto.Similarity, auto.Line).ShouldBe((AutoSpec.DefaultSimilarAbove, AutoSpec.DefaultBigFrom, (double?)null, 0));
    }

    [Fact]
    public void The_spec_overrides_the_thresholds_and_may_give_the_similarity()
    {
        AutoSpec auto = Parse(Spec("auto: {similar_above: 0.5, big_from: 300, similarity: 0.7}")).Auto;

        (auto.SimilarAbove, auto.BigFrom, auto.Similarity, auto.Line).ShouldBe((0.5, 300, (double?)0.7, 5));
    }

    [Theory]
    [InlineData("auto: {similar_above: 1.5}", "spec.yaml line 5: auto.similar_above 1.5 must be a similarity score from 0 to 1")]
    [InlineData("auto: {similarity: -0.1}", "spec.yaml line 5: auto.similarity -0.1 must be a similarity score from 0 to 1")]
    [InlineData("auto: {big_from: 0}", "spec.yaml line 5: auto.big_from 0 must be a whole number of training images per class, at least 1")]
    [InlineData("auto: {big_from: many}", "spec.yaml line 5: auto.big_from 'many' must be a whole number of training images per class, at least 1")]
    [InlineData("auto: {threshold: 0.9}", "spec.yaml line 5: unknown field 'auto.threshold'; allowed in auto: similar_above, big_from, similarity")]
    [InlineData("auto: 0.9", "spec.yaml line 5: auto must be a mapping such as {similar_above: 0.88, big_from: 1200}, not '0.9'")]
    [InlineData("cutoff: layer3", "spec.yaml line 5: cutoff with strategy auto (line 4): auto chooses the cutoff from the decision table; remove cutoff, or name a strategy")]
    [InlineData("weights: random", "spec.yaml line 5: weights random with strategy auto (line 4): auto compares the data with the domain the weights were pretrained on")]
    public void A_bad_auto_value_names_its_line(string line, string problem)
    {
        Error(Spec(line)).ShouldStartWith(problem);
    }

    [Fact]
    public void Random_weights_may_go_with_auto_when_the_similarity_is_given()
    {
        Parse(Spec("model: resnet18", "weights: random", "auto: {similarity: 0.2}")).Auto.Similarity.ShouldBe(0.2);
    }

    [Fact]
    public void An_auto_field_without_strategy_auto_is_refused()
    {
        string yaml = "name: test\ndataset:\n  train: train\nstrategy: fine-tune-all\nauto: {big_from: 10}\n";

        Error(yaml).ShouldBe("spec.yaml line 5: auto sets the thresholds of strategy auto, which no strategy of the spec is; remove it, or add auto to strategy");
    }

    [Fact]
    public void A_cutoff_serves_the_other_strategies_of_a_list_with_auto()
    {
        Parse(Spec("cutoff: layer3").Replace("strategy: auto", "strategy: [auto, fine-tune-top]")).Cutoff!.Single.ShouldBe("layer3");
    }
}
