using Cluster.Contracts.Training;
using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Extraction;
using Cluster.GpuWorker.Hosting;
using Cluster.GpuWorker.Tests.Kernels;
using Cluster.GpuWorker.Training;
using Cluster.Storage.Database;
using Cluster.Storage.Datasets;
using Cluster.Storage.Files;
using Microsoft.Extensions.Logging.Abstractions;

namespace Cluster.GpuWorker.Tests.Training;

/// <summary>
/// A storage root, an embedded database and a small, separable image dataset (real PNGs: reddish horizontal stripes
/// against bluish vertical ones, each image with its own phase and shade) for training tests; each test gets its own.
/// </summary>
internal sealed class TrainingFixture : IAsyncDisposable
{
    private TrainingFixture(string root, ClusterDbContextFactory databases, FileStore store, DatasetManifest train, DatasetManifest test)
    {
        Root = root;
        Databases = databases;
        Store = store;
        Train = train;
        Test = test;
    }

    public string Root { get; }

    public ClusterDbContextFactory Databases { get; }

    public FileStore Store { get; }

    public DatasetManifest Train { get; }

    public DatasetManifest Test { get; }

    public static async Task<TrainingFixture> CreateAsync(int perClass = 24, int side = 40)
    {
        string root = Path.Combine(Path.GetTempPath(), $"cluster-training-{Guid.NewGuid():N}");
        Directory.CreateDirectory(root);
        var databases = new ClusterDbContextFactory(DatabaseProvider.Sqlite, $"Data Source={Path.Combine(root, "cluster.db")}");
        await databases.MigrateAsync(CancellationToken.None);
        var store = new FileStore(Path.Combine(root, "storage"));
        DatasetManifest train = await WriteAndScanAsync(Path.Combine(root, "images", "train"), perClass, side, seed: 0, store);
        DatasetManifest test = await WriteAndScanAsync(Path.Combine(root, "images", "test"), perClass / 2, side, seed: 5000, store);
        return new TrainingFixture(root, databases, store, train, test);
    }

    /// <summary>A trainer as a worker has one: a new instance is what a restarted worker process would build (with
    /// nothing in memory, unless <paramref name="resident"/> is the one an earlier trainer of the same process used).</summary>
    public SegmentTrainer NewTrainer(ResidentFeatureSets? resident = null, string workerId = "test-worker", SegmentTimeLimit? timeLimit = null) => new(Databases, Store, new DatasetManifestCache(Store), TestKernels.Verifier,
        WorkerIdentity.Create(workerId, TorchDevice.Cpu), new JobTracker(), resident ?? NewResidentFeatures(), timeLimit ?? SegmentTimeLimit.None, NullLogger<SegmentTrainer>.Instance);

    /// <summary>A worker's feature sets in memory, reading this fixture's storage, with room for 256 MiB.</summary>
    public ResidentFeatureSets NewResidentFeatures(long budgetBytes = 256L << 20) =>
        new(budgetBytes, (key, ct) => FeatureSetReader.LoadAsync(Databases, Store, key, ct));

    public TrialData Data(bool test = true) => new()
    {
        TrainDatasetId = Train.Id,
        ValidationFraction = 0.25,
        SplitSeed = 3,
        TestDatasetId = test ? Test.Id : null,
        ClassNames = [.. Train.Classes.Select(c => c.Name)],
    };

    public static TrainSegment Segment(Guid trial, TrialSettings settings, TrialData data, int segment, int from, int to) => new()
    {
        SweepId = Guid.Empty, TrialId = trial, Segment = segment, EpochFrom = from, EpochTo = to, IsLast = to == settings.Epochs,
        Settings = settings, Data = data,
    };

    private static async Task<DatasetManifest> WriteAndScanAsync(string folder, int perClass, int side, int seed, FileStore store)
    {
        Cluster.TestSupport.Training.StripeImages.Write(folder, perClass, side, seed);
        DatasetManifest manifest = await DatasetScanner.ScanFolderAsync(folder, null, CancellationToken.None);
        await manifest.SaveAsync(store, CancellationToken.None);
        return manifest;
    }

    public ValueTask DisposeAsync()
    {
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        try
        {
            Directory.Delete(Root, recursive: true);
        }
        catch (IOException)
        {
        }
        return ValueTask.CompletedTask;
    }
}
