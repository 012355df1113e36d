using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Similarity;
using Cluster.TestSupport;
using Shouldly;
using Xunit.Abstractions;

namespace Cluster.GpuWorker.Tests.Similarity;

/// <summary>
/// The similarity `strategy: auto` decides with: batch-norm statistics of a sample against those recorded in
/// pretraining. Synthetic moments check the arithmetic; real images check that it tells photos from Fashion-MNIST.
/// </summary>
public sealed class BatchNormSimilarityTests(ITestOutputHelper output)
{
    private static readonly string[] s_photos = ["astronaut.jpg", "cat.jpg", "coffee.jpg", "rocket.jpg"];

    private static string Photo(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", "images", name);

    /// <summary>examples/fashion-sample/train in the repository (the tests run from its bin folder).</summary>
    private static string FashionSample
    {
        get
        {
            string? folder = AppContext.BaseDirectory;
            while (folder is not null && !File.Exists(Path.Combine(folder, "Cluster.sln")))
            {
                folder = Path.GetDirectoryName(folder);
            }
            return Path.Combine(folder ?? throw new DirectoryNotFoundException("the repository root (Cluster.sln)"), "examples", "fashion-sample", "train");
        }
    }

    /// <summary>The first <paramref name="perClass"/> images of each class of the Fashion-MNIST sample, as full paths.</summary>
    private static string[] FashionImages(int perClass) =>
        [.. Directory.GetDirectories(FashionSample).Order(StringComparer.Ordinal)
            .SelectMany(d => Directory.GetFiles(d, "*.png").Order(StringComparer.Ordinal).Take(perClass))];

    [Fact]
    public void Identical_statistics_score_one()
    {
        double[] mean = [0.5, -1.0, 3.0], variance = [1.0, 0.25, 4.0];
        DomainSimilarity score = BatchNormSimilarity.Score([new BatchNormLayerStatistics("bn1", mean, variance, mean, variance)], images: 8, inputSize: 32);

        score.Divergence.ShouldBe(0, 1e-12);
        score.Score.ShouldBe(1, 1e-12);
    }

    [Fact]
    public void A_shifted_mean_diverges_as_two_gaussians_do_and_layers_weigh_alike()
    {
        // KL(N(1, 1) ‖ N(0, 1)) = 1/2; a wide layer with no shift must not outvote a narrow one that shifted.
        BatchNormSimilarity.GaussianKl(1, 1, 0, 1).ShouldBe(0.5, 1e-4);
        var shifted = new BatchNormLayerStatistics("bn1", [1.0], [1.0], [0.0], [1.0]);
        double[] zeros = new double[64], ones = [.. Enumerable.Repeat(1.0, 64)];
        var wide = new BatchNormLayerStatistics("bn2", zeros, ones, zeros, ones);

        DomainSimilarity score = BatchNormSimilarity.Score([shifted, wide], images: 8, inputSize: 32);

        score.Divergence.ShouldBe(0.25, 1e-4);
        score.Score.ShouldBe(Math.Exp(-0.25), 1e-4);
    }

    /// <summary>At the native 224 pixels, where the domain is measured: at 64 photos and clothes score alike (the calibration below).</summary>
    [Fact]
    public void Photos_score_higher_than_fashion_mnist_on_the_imagenet_network()
    {
        ArchitectureInfo architecture = ModelCatalog.Find(BuiltInModels.ResNet18ImageNet);
        Preprocessing preprocessing = architecture.Preprocessing;
        using Backbone backbone = architecture.Build();

        DomainSimilarity photos = BatchNormSimilarity.Measure(backbone, preprocessing, [.. s_photos.Select(Photo)])!;
        DomainSimilarity fashion = BatchNormSimilarity.Measure(backbone, preprocessing, FashionImages(perClass: 1))!;

        output.WriteLine($"photos {photos.Score:F3} (divergence {photos.Divergence:F3}), fashion {fashion.Score:F3} ({fashion.Divergence:F3}), {photos.Layers} batch norms");
        photos.Layers.ShouldBe(fashion.Layers);
        photos.Layers.ShouldBeGreaterThan(15);
        photos.Images.ShouldBe(4);
        fashion.Images.ShouldBe(10);
        photos.Score.ShouldBeGreaterThan(fashion.Score + 0.05);
    }

    [Fact]
    public void Torchvision_batch_norms_are_read_through_hooks_that_are_removed_afterwards()
    {
        ArchitectureInfo architecture = ModelCatalog.Find("resnet18");
        using Backbone backbone = architecture.Build();
        Preprocessing preprocessing = architecture.Preprocessing.AtSize(32);
        string[] images = [.. s_photos.Take(2).Select(Photo)];

        DomainSimilarity first = BatchNormSimilarity.Measure(backbone, preprocessing, images)!;
        DomainSimilarity second = BatchNormSimilarity.Measure(backbone, preprocessing, images)!;

        // ResNet-18: bn1, two per basic block (8 blocks), one per downsample (3).
        first.Layers.ShouldBe(20);
        second.ShouldBe(first, "a hook left behind would count the second run's activations twice");
    }

    [Fact]
    public void A_network_without_batch_norms_has_no_score()
    {
        ArchitectureInfo architecture = ModelCatalog.Find("alexnet");
        using Backbone backbone = architecture.Build();

        BatchNormSimilarity.Measure(backbone, architecture.Preprocessing.AtSize(64), [Photo("cat.jpg")]).ShouldBeNull();
    }

    /// <summary>
    /// The calibration of `auto.similar_above` (docs/architecture.md): photos against Fashion-MNIST images at 64 and 224
    /// pixels. <c>CLUSTER_BENCHMARKS=1 dotnet test tests/GpuWorker.Tests --filter Calibration --logger "console;verbosity=detailed"</c>
    /// </summary>
    [BenchmarkFact]
    public void Calibration_photos_and_fashion_mnist_at_64_and_224()
    {
        ArchitectureInfo architecture = ModelCatalog.Find(BuiltInModels.ResNet18ImageNet);
        using Backbone backbone = architecture.Build();
        string[] more = ["/usr/share/matplotlib/mpl-data/sample_data/grace_hopper.jpg", "/usr/lib/python3/dist-packages/sklearn/datasets/images/china.jpg",
            "/usr/lib/python3/dist-packages/sklearn/datasets/images/flower.jpg"];
        string[] photos = [.. s_photos.Select(Photo), .. more.Where(File.Exists)];
        foreach (int size in new[] { 64, 224 })
        {
            Preprocessing preprocessing = architecture.Preprocessing.AtSize(size);
            foreach (string photo in photos)
            {
                DomainSimilarity one = BatchNormSimilarity.Measure(backbone, preprocessing, [photo])!;
                output.WriteLine($"{size}px photo {Path.GetFileName(photo)}: score {one.Score:F3}, divergence {one.Divergence:F3}");
            }
            DomainSimilarity all = BatchNormSimilarity.Measure(backbone, preprocessing, photos)!;
            output.WriteLine($"{size}px all {all.Images} photos: score {all.Score:F3}, divergence {all.Divergence:F3}");
            DomainSimilarity fashion = BatchNormSimilarity.Measure(backbone, preprocessing, FashionImages(perClass: 13))!;
            output.WriteLine($"{size}px fashion-sample {fashion.Images} images: score {fashion.Score:F3}, divergence {fashion.Divergence:F3}");
        }
    }
}
