using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Prediction;
using Cluster.GpuWorker.Tests.Kernels;
using Cluster.GpuWorker.Weights;
using Shouldly;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Prediction;

public sealed class PredictorTests : IDisposable
{
    private static readonly string s_images = Path.Combine(AppContext.BaseDirectory, "Fixtures", "images");
    private readonly string _folder = Directory.CreateTempSubdirectory("predictor-tests-").FullName;

    public PredictorTests() => TorchRuntime.Initialize();

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    /// <summary>Makes the last Linear layer answer <paramref name="favourite"/> for any input, by a large bias.</summary>
    private static void Favour(nn.Module model, string weight, string bias, int favourite)
    {
        using var noGrad = no_grad();
        var parameters = model.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        parameters[weight].zero_();
        parameters[bias].zero_();
        parameters[bias][favourite] = tensor(20f);
    }

    private static string[] Photos => Directory.GetFiles(s_images, "*.jpg").Order(StringComparer.Ordinal).ToArray();

    [Fact]
    public void A_checkpoint_predicts_with_the_class_names_stored_in_it()
    {
        string checkpoint = Path.Combine(_folder, "birds.safetensors");
        using (Backbone model = ModelCatalog.Find("mobilenet_v3_small").Build(new BackboneOptions(NumClasses: 3)))
        {
            Favour(model, "classifier.3.weight", "classifier.3.bias", favourite: 2);
            Predictor.SaveCheckpoint(checkpoint, "mobilenet_v3_small", model, ["cat", "dog", "bird"]);
        }

        using Predictor predictor = Predictor.FromCheckpoint(checkpoint, TestKernels.Verifier);
        IReadOnlyList<ImagePrediction> predictions = predictor.Predict(Photos, top: 3);

        predictions.Count.ShouldBe(Photos.Length);
        foreach (ImagePrediction p in predictions)
        {
            p.Skipped.ShouldBeNull();
            p.Top.Select(c => c.Class).ShouldBe(["bird", "cat", "dog"], ignoreOrder: false, customMessage: "bird first; the tied rest by index");
            p.Top[0].Probability.ShouldBeGreaterThan(0.99);
            p.Top.Sum(c => c.Probability).ShouldBe(1.0, 1e-4);
        }
    }

    [Fact]
    public void A_thousand_class_head_is_named_with_imagenet_classes()
    {
        string weights = Path.Combine(_folder, "resnet18-tabby.safetensors");
        using (Backbone model = ModelCatalog.Find("resnet18").Build())
        {
            Favour(model, "fc.weight", "fc.bias", favourite: 281);
            StateDictFile.SaveSafetensors(weights, model);
        }

        using Predictor predictor = Predictor.FromArchitecture("resnet18", weights, TestKernels.Verifier);
        ImagePrediction prediction = predictor.Predict([Photos[0]], top: 5).Single();

        prediction.Top.Count.ShouldBe(5);
        prediction.Top[0].Class.ShouldBe("tabby");
        prediction.Top[0].Index.ShouldBe(281);
        prediction.Top.Select(c => c.Probability).ShouldBeInOrder(SortDirection.Descending);
    }

    [Fact]
    public void A_bad_image_is_reported_and_the_others_are_still_predicted()
    {
        string broken = Path.Combine(_folder, "broken.jpg");
        File.WriteAllText(broken, "not a picture");
        using Predictor predictor = Predictor.FromArchitecture("mobilenet_v3_small", weightsFile: null, TestKernels.Verifier);

        IReadOnlyList<ImagePrediction> predictions = predictor.Predict([Photos[0], broken, Photos[1]], top: 2);

        predictions[1].Skipped.ShouldStartWith("not-an-image");
        predictions[0].Top.Count.ShouldBe(2);
        predictions[2].Top.Count.ShouldBe(2);
    }

    [Fact]
    public void A_feature_extractor_without_a_classifier_is_refused_with_what_to_do_instead()
    {
        var error = Should.Throw<ArgumentException>(() => Predictor.FromArchitecture("resnet18-imagenet", null, TestKernels.Verifier));

        error.Message.ShouldContain("has no classifier");
        error.Message.ShouldContain("coordinator extract");
    }

    [Fact]
    public void Plain_weights_are_not_taken_for_a_checkpoint()
    {
        string weights = Path.Combine(_folder, "plain.safetensors");
        using (Backbone model = ModelCatalog.Find("mobilenet_v3_small").Build())
        {
            StateDictFile.SaveSafetensors(weights, model);
        }

        var error = Should.Throw<WeightsFileException>(() => Predictor.FromCheckpoint(weights, TestKernels.Verifier));

        error.Message.ShouldContain("class_names");
    }
}
