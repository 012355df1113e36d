using Cluster.Coordinator.Planning;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Weights;
using Cluster.Storage.Files;
using Shouldly;
using Xunit;

namespace Cluster.Coordinator.Tests.Planning;

public sealed class WeightsStagingTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("weights-staging-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private string SaveWeightsOf(string architecture, string fileName)
    {
        string path = Path.Combine(_root, fileName);
        using Backbone model = ModelCatalog.Find(architecture).Build();
        StateDictFile.SaveSafetensors(path, model, new Dictionary<string, string>());
        return path;
    }

    [Fact]
    public async Task A_file_that_fits_is_staged_once_under_its_hash_with_the_same_bytes()
    {
        string path = SaveWeightsOf("resnet18", "mine.safetensors");
        var store = new FileStore(Path.Combine(_root, "storage"));

        string sha256 = await WeightsStaging.CheckAsync(path, ModelCatalog.Find("resnet18"), model: null, CancellationToken.None);
        string staged = await WeightsStaging.StageAsync(store, path, sha256, CancellationToken.None);
        DateTime firstWrite = File.GetLastWriteTimeUtc(store.Resolve(staged));
        string again = await WeightsStaging.StageAsync(store, path, sha256, CancellationToken.None);

        sha256.Length.ShouldBe(64);
        staged.ShouldBe($"weights/{sha256[..16]}/mine.safetensors");
        again.ShouldBe(staged);
        File.GetLastWriteTimeUtc(store.Resolve(staged)).ShouldBe(firstWrite);
        File.ReadAllBytes(store.Resolve(staged)).ShouldBe(File.ReadAllBytes(path));
        WeightsStaging.HashName(sha256).ShouldBe($"sha256:{sha256}");
    }

    [Fact]
    public async Task Weights_of_another_architecture_are_refused_on_one_line_with_the_difference()
    {
        string path = SaveWeightsOf("resnet34", "resnet34.safetensors");

        var error = await Should.ThrowAsync<WeightsCheckException>(
            () => WeightsStaging.CheckAsync(path, ModelCatalog.Find("resnet18"), model: null, CancellationToken.None));

        error.Message.ShouldStartWith("does not fit resnet18: ");
        error.Message.ShouldContain("layer"); // the diff names the tensors that differ
        error.Message.ShouldNotContain("\n");
    }

    [Fact]
    public async Task A_missing_file_is_refused()
    {
        var error = await Should.ThrowAsync<WeightsCheckException>(
            () => WeightsStaging.CheckAsync(Path.Combine(_root, "absent.safetensors"), ModelCatalog.Find("resnet18"), model: null, CancellationToken.None));

        error.Message.ShouldBe("does not exist");
    }
}
