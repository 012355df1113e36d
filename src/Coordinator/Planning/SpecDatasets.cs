using Cluster.Coordinator.Specs;
using Cluster.Storage.Datasets;
using Cluster.Storage.Files;

namespace Cluster.Coordinator.Planning;

/// <summary>The folders a spec's `dataset` names, scanned; a missing or unreadable one is a <see cref="SpecException"/> naming the line.</summary>
public static class SpecDatasets
{
    /// <param name="store">Where each manifest is saved for the workers; null only reads (`sweep plan` writes nothing).</param>
    public static async Task<TrialDatasets> ScanAsync(SweepSpec spec, FileStore? store, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(spec);
        async Task<DatasetManifest> Scan(string field, SpecPath path)
        {
            if (!Directory.Exists(path.FullPath))
            {
                throw new SpecException($"{spec.Source} line {spec.Dataset.Line}: {field} '{path.Text}' is not a folder ({path.FullPath})");
            }
            DatasetManifest manifest;
            try
            {
                manifest = await DatasetScanner.ScanFolderAsync(path.FullPath, null, ct);
            }
            catch (DatasetInputException e)
            {
                throw new SpecException($"{spec.Source} line {spec.Dataset.Line}: {field} '{path.Text}': {e.Message}", e);
            }
            if (store is not null)
            {
                await manifest.SaveAsync(store, ct);
            }
            return manifest;
        }
        DatasetManifest train = await Scan("dataset.train", spec.Dataset.Train);
        DatasetManifest? validation = spec.Dataset.ValidationPath is SpecPath v ? await Scan("dataset.validation", v) : null;
        DatasetManifest? test = spec.Dataset.Test is SpecPath t ? await Scan("dataset.test", t) : null;
        return new TrialDatasets(train, validation, test);
    }
}
