using System.Text.Json;
using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Training.Heads;
using Shouldly;
using Xunit.Abstractions;

namespace Cluster.GpuWorker.Tests.Training;

/// <summary>
/// The feature-extractor heads. Logistic regression and k-NN against scikit-learn's fits of the same rows
/// (Fixtures/heads/make_head_fixtures.py, python3-sklearn 1.2); every head on a problem it must learn.
/// </summary>
public sealed class FeatureHeadTests(ITestOutputHelper output)
{
    static FeatureHeadTests() => TorchRuntime.Initialize();

    public static TheoryData<string> Heads => new(HeadKinds.Names);

    [Fact]
    public void Logistic_regression_reaches_the_optimum_scikit_learn_reaches()
    {
        SklearnFixture fixture = SklearnFixture.Load();
        using var head = (LogisticHead)FeatureHead.Train(HeadKind.Logistic, fixture.Train, fixture.Classes,
            new HeadSettings { InverseRegularization = fixture.Logistic.GetProperty("C").GetDouble() });

        double[] expectedWeights = Doubles(fixture.Logistic, "coef");
        double[] expectedBias = Doubles(fixture.Logistic, "intercept");
        double[] expectedProbabilities = Doubles(fixture.Logistic, "test_probabilities");
        double weightError = MaxDifference(head.Weights, expectedWeights);
        double biasError = MaxDifference(head.Bias, expectedBias);
        double probabilityError = MaxDifference(head.PredictProbabilities(fixture.Test), expectedProbabilities);
        output.WriteLine($"{head.Iterations} iterations; max |w - sklearn| {weightError:E2} (largest {expectedWeights.Max(Math.Abs):F3}), " +
            $"bias {biasError:E2}, test probabilities {probabilityError:E2}");

        weightError.ShouldBeLessThanOrEqualTo(1e-5 * expectedWeights.Max(Math.Abs));
        biasError.ShouldBeLessThanOrEqualTo(1e-5 * Math.Max(1, expectedBias.Max(Math.Abs)));
        probabilityError.ShouldBeLessThanOrEqualTo(1e-6);
        head.Accuracy(fixture.Test).ShouldBe(fixture.Logistic.GetProperty("test_accuracy").GetDouble(), 1e-12);
    }

    [Fact]
    public void Nearest_neighbours_predict_what_scikit_learn_predicts()
    {
        SklearnFixture fixture = SklearnFixture.Load();
        int k = fixture.Knn.GetProperty("k").GetInt32();
        using FeatureHead head = FeatureHead.Train(HeadKind.Knn, fixture.Train, fixture.Classes, new HeadSettings { Neighbours = k });

        int[] expected = [.. fixture.Knn.GetProperty("test_predictions").EnumerateArray().Select(e => e.GetInt32())];

        head.Predict(fixture.Test).ShouldBe(expected);
        double[] probabilities = head.PredictProbabilities(fixture.Test);
        probabilities.ShouldAllBe(p => Math.Abs(p * k - Math.Round(p * k)) < 1e-12);
    }

    [Fact]
    public void Nearest_neighbours_give_the_same_votes_when_distances_are_computed_in_many_blocks()
    {
        SklearnFixture fixture = SklearnFixture.Load();
        int k = fixture.Knn.GetProperty("k").GetInt32();
        // 220 training rows in blocks of 7 and 60 queries in blocks of 5: the running top-k crosses every boundary.
        using var blocked = new KnnHead(fixture.Train, fixture.Classes, k, queryBlock: 5, trainBlock: 7);
        using FeatureHead whole = FeatureHead.Train(HeadKind.Knn, fixture.Train, fixture.Classes, new HeadSettings { Neighbours = k });

        blocked.PredictProbabilities(fixture.Test).ShouldBe(whole.PredictProbabilities(fixture.Test));
        blocked.Predict(fixture.Test).ShouldBe([.. fixture.Knn.GetProperty("test_predictions").EnumerateArray().Select(e => e.GetInt32())]);
    }

    [Theory]
    [MemberData(nameof(Heads))]
    public void Every_head_learns_separable_clusters_well_above_chance(string name)
    {
        // Four Gaussian clusters in 32 dimensions, centres 4 standard deviations apart in a random direction.
        (FeatureRows train, FeatureRows test) = Clusters(classes: 4, dimensions: 32, perClass: 60, seed: 5);
        using FeatureHead head = FeatureHead.Train(HeadKinds.Parse(name), train, 4, new HeadSettings { Seed = 1 });

        double accuracy = head.Accuracy(test);
        output.WriteLine($"{name}: test accuracy {accuracy:P1} (chance 25%)");

        accuracy.ShouldBeGreaterThanOrEqualTo(0.95, name);
        double[] probabilities = head.PredictProbabilities(test);
        for (int r = 0; r < test.Rows; r++)
        {
            probabilities.AsSpan(r * 4, 4).ToArray().Sum().ShouldBe(1.0, 1e-5, name);
        }
    }

    [Theory]
    [InlineData("mlp")]
    [InlineData("sdca")]
    public void The_same_seed_gives_the_same_head_and_another_seed_another(string name)
    {
        (FeatureRows train, FeatureRows test) = Clusters(classes: 3, dimensions: 16, perClass: 40, seed: 9);
        HeadKind kind = HeadKinds.Parse(name);

        double[] Probabilities(long seed)
        {
            using FeatureHead head = FeatureHead.Train(kind, train, 3, new HeadSettings { Seed = seed, Epochs = 5 });
            return head.PredictProbabilities(test);
        }

        double[] first = Probabilities(3);
        Probabilities(3).ShouldBe(first);
        Probabilities(4).ShouldNotBe(first);
    }

    [Fact]
    public void The_mlp_is_the_reference_top_model_and_its_training_loss_falls()
    {
        (FeatureRows train, _) = Clusters(classes: 3, dimensions: 20, perClass: 50, seed: 2);
        using var head = (MlpHead)FeatureHead.Train(HeadKind.Mlp, train, 3, new HeadSettings { Epochs = 10 });

        var shapes = head.Module.state_dict().ToDictionary(p => p.Key, p => p.Value.shape);
        shapes["hidden.weight"].ShouldBe([256L, 20L]);
        shapes["output.weight"].ShouldBe([3L, 256L]);
        head.EpochLosses.Count.ShouldBe(10);
        head.EpochLosses[^1].ShouldBeLessThan(head.EpochLosses[0] / 2);
    }

    [Fact]
    public void Bad_head_settings_and_data_are_refused_with_one_line_naming_the_field()
    {
        (FeatureRows train, _) = Clusters(classes: 2, dimensions: 4, perClass: 5, seed: 1);

        Should.Throw<UnknownNameException>(() => HeadKinds.Parse("svm")).Message
            .ShouldStartWith("unknown head 'svm' for strategy feature-extractor; valid (closest first): ");
        Should.Throw<ArgumentException>(() => FeatureHead.Train(HeadKind.Logistic, train, 2, new HeadSettings { InverseRegularization = 0 }))
            .Message.ShouldStartWith("head logistic: C 0: must be a positive number");
        Should.Throw<ArgumentException>(() => FeatureHead.Train(HeadKind.Mlp, train, 2, new HeadSettings { Dropout = 1 }))
            .Message.ShouldStartWith("head mlp: dropout 1: must be in [0, 1)");
        Should.Throw<ArgumentException>(() => FeatureHead.Train(HeadKind.Knn, train, 2, new HeadSettings { Neighbours = 11 }))
            .Message.ShouldStartWith("head knn: neighbours 11: there are only 6 training rows");
        Should.Throw<ArgumentException>(() => FeatureHead.Train(HeadKind.Logistic, train, 1))
            .Message.ShouldStartWith("1 class(es): a classifier needs at least 2");
        using FeatureHead head = FeatureHead.Train(HeadKind.Logistic, train, 2);
        Should.Throw<ArgumentException>(() => head.Predict(new FeatureRows(new float[6], 3)))
            .Message.ShouldStartWith("rows of 3 features for a head trained on 4");
    }

    /// <summary>Gaussian clusters (unit variance) around random centres, half of each class for training, half for testing.</summary>
    private static (FeatureRows Train, FeatureRows Test) Clusters(int classes, int dimensions, int perClass, int seed)
    {
        var random = new Random(seed);
        double Gaussian() => Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());
        double[][] centres = [.. Enumerable.Range(0, classes).Select(_ =>
        {
            double[] direction = [.. Enumerable.Range(0, dimensions).Select(_ => Gaussian())];
            double norm = Math.Sqrt(direction.Sum(v => v * v));
            return direction.Select(v => v / norm * 4 * Math.Sqrt(2)).ToArray();
        })];
        var train = (Values: new List<float>(), Labels: new List<int>());
        var test = (Values: new List<float>(), Labels: new List<int>());
        for (int i = 0; i < perClass; i++)
        {
            for (int c = 0; c < classes; c++)
            {
                var target = i % 2 == 0 ? train : test;
                target.Values.AddRange(centres[c].Select(m => (float)(m + Gaussian())));
                target.Labels.Add(c);
            }
        }
        return (new FeatureRows([.. train.Values], dimensions, [.. train.Labels]), new FeatureRows([.. test.Values], dimensions, [.. test.Labels]));
    }

    private static double[] Doubles(JsonElement element, string name) => [.. element.GetProperty(name).EnumerateArray().Select(e => e.GetDouble())];

    private static double MaxDifference(double[] actual, double[] expected)
    {
        actual.Length.ShouldBe(expected.Length);
        return actual.Zip(expected).Max(p => Math.Abs(p.First - p.Second));
    }

    private sealed record SklearnFixture(FeatureRows Train, FeatureRows Test, int Classes, JsonElement Logistic, JsonElement Knn)
    {
        public static SklearnFixture Load()
        {
            using JsonDocument document = JsonDocument.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Fixtures", "heads", "heads.json")));
            JsonElement root = document.RootElement.Clone();
            int features = root.GetProperty("features").GetInt32();
            float[] Floats(string name) => [.. root.GetProperty(name).EnumerateArray().Select(e => e.GetSingle())];
            int[] Ints(string name) => [.. root.GetProperty(name).EnumerateArray().Select(e => e.GetInt32())];
            return new SklearnFixture(
                new FeatureRows(Floats("train_x"), features, Ints("train_y")),
                new FeatureRows(Floats("test_x"), features, Ints("test_y")),
                root.GetProperty("classes").GetInt32(),
                root.GetProperty("logistic"),
                root.GetProperty("knn"));
        }
    }
}
