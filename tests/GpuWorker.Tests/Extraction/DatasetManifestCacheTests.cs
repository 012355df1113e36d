using Cluster.GpuWorker.Extraction;
using Cluster.Storage.Datasets;
using Cluster.Storage.Files;
using Shouldly;

namespace Cluster.GpuWorker.Tests.Extraction;

public sealed class DatasetManifestCacheTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("manifest-cache-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private async Task<DatasetManifest> SaveDatasetAsync(FileStore store, string root)
    {
        foreach ((string path, string text) in new[] { ("cats/1.png", "one"), ("dogs/2.png", "two") })
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(root, path))!);
            await File.WriteAllTextAsync(Path.Combine(root, path), text);
        }
        DatasetManifest manifest = await DatasetScanner.ScanFolderAsync(root, null, CancellationToken.None);
        await manifest.SaveAsync(store, CancellationToken.None);
        return manifest;
    }

    [Fact]
    public async Task Consecutive_shards_of_a_dataset_share_one_loaded_manifest()
    {
        var store = new FileStore(Path.Combine(_folder, "storage"));
        DatasetManifest saved = await SaveDatasetAsync(store, Path.Combine(_folder, "images"));
        var cache = new DatasetManifestCache(store);

        DatasetManifest first = await cache.GetAsync(saved.Id, CancellationToken.None);
        DatasetManifest second = await cache.GetAsync(saved.Id, CancellationToken.None);

        first.Entries.ShouldBe(saved.Entries);
        second.ShouldBeSameAs(first);
    }

    [Fact]
    public async Task The_same_images_rescanned_from_another_folder_are_read_from_their_new_root()
    {
        var store = new FileStore(Path.Combine(_folder, "storage"));
        DatasetManifest before = await SaveDatasetAsync(store, Path.Combine(_folder, "images"));
        var cache = new DatasetManifestCache(store);
        (await cache.GetAsync(before.Id, CancellationToken.None)).Root.ShouldBe(before.Root);
        // Same bytes, same labels, so the same id; but dataset.json now names the new folder.
        File.SetLastWriteTimeUtc(store.Resolve($"datasets/{before.Id}/{DatasetManifest.InfoFileName}"), DateTime.UtcNow.AddMinutes(-5));

        DatasetManifest moved = await SaveDatasetAsync(store, Path.Combine(_folder, "moved-images-folder"));
        DatasetManifest after = await cache.GetAsync(moved.Id, CancellationToken.None);

        moved.Id.ShouldBe(before.Id);
        after.Root.ShouldBe(moved.Root);
        after.Root.ShouldNotBe(before.Root);
    }

    [Fact]
    public async Task A_dataset_not_in_storage_is_a_dataset_input_error_naming_it()
    {
        var cache = new DatasetManifestCache(new FileStore(Path.Combine(_folder, "storage")));

        var error = await Should.ThrowAsync<DatasetInputException>(() => cache.GetAsync("0123456789abcdef", CancellationToken.None));

        error.Message.ShouldContain("0123456789abcdef");
    }
}
