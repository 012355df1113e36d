using Cluster.Storage.Datasets;
using Cluster.Storage.Files;

namespace Cluster.GpuWorker.Extraction;

/// <summary>
/// The manifest of the dataset the worker is extracting, loaded once instead of once per shard: a 70,000-image
/// manifest is ~20 MB of strings re-read and re-hashed on every shard otherwise. Keeps only the last one, as a
/// worker runs one job at a time and consecutive shards come from the same dataset.
/// </summary>
/// <remarks>
/// A dataset id is the hash of its manifest.tsv, so the entries behind an id never change. Its dataset.json (where
/// the images live) can: a rescan of the same images from another folder keeps the id and moves the root, so the
/// cached copy is reused only while dataset.json is the file it was read from.
/// </remarks>
public sealed class DatasetManifestCache(FileStore store)
{
    private readonly SemaphoreSlim _gate = new(1, 1);
    private (string Id, DateTime InfoWrittenAt, long InfoBytes)? _key;
    private DatasetManifest? _manifest;

    public async Task<DatasetManifest> GetAsync(string datasetId, CancellationToken cancellationToken)
    {
        await _gate.WaitAsync(cancellationToken);
        try
        {
            var key = (datasetId, InfoWrittenAt(datasetId), InfoBytes(datasetId));
            if (_manifest is not null && _key == key)
            {
                return _manifest;
            }
            // Let go of the previous dataset before reading the next, so two never sit in memory together.
            _manifest = null;
            _key = null;
            DatasetManifest manifest = await DatasetManifest.LoadAsync(store, datasetId, cancellationToken);
            (_manifest, _key) = (manifest, key);
            return manifest;
        }
        finally
        {
            _gate.Release();
        }
    }

    private string InfoFile(string datasetId) => store.Resolve($"{DatasetManifest.DirectoryOf(datasetId)}/{DatasetManifest.InfoFileName}");

    private DateTime InfoWrittenAt(string datasetId) => File.GetLastWriteTimeUtc(InfoFile(datasetId));

    private long InfoBytes(string datasetId)
    {
        var file = new FileInfo(InfoFile(datasetId));
        return file.Exists ? file.Length : -1;
    }
}
