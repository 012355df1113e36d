using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Cluster.IntegrationTests.Support;
using Cluster.Storage.Database.Entities;
using Cluster.TestSupport.Training;
using Microsoft.EntityFrameworkCore;
using Shouldly;
using Xunit.Abstractions;

namespace Cluster.IntegrationTests;

/// <summary>
/// The chaos suite: a sweep and a feature extraction run at once on real processes (RabbitMQ, PostgreSQL, `coordinator
/// serve`, two `gpu-worker`s) while, in turn, workers are killed with SIGKILL, RabbitMQ and PostgreSQL crash and come
/// back, the coordinator service is killed and started again, and a worker is stopped with SIGTERM. Both complete; every
/// trial ends in a terminal state; no segment, metric or shard is recorded twice; and the results equal those of a
/// fault-free run with the same seed.
/// </summary>
[Collection(nameof(ServerFaultsCollection))]
public sealed class ChaosTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const int Epochs = 4;
    private const int Trials = 3;
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(10);
    private readonly Dictionary<string, ClusterProcess> _workers = [];
    private IsolatedCluster _cluster = null!;
    private ClusterProcess _serve = null!;
    private int _workerCount;

    public async Task InitializeAsync()
    {
        _cluster = await IsolatedCluster.CreateAsync();
        await _cluster.MigrateAsync(s_deadline);
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    private string Images => Path.Combine(_cluster.StorageRoot, "..", $"images-{_cluster.Name}");

    private string WriteSpec()
    {
        StripeImages.Write(Path.Combine(Images, "train"), perClass: 16);
        string spec = Path.Combine(Images, "chaos.yaml");
        File.WriteAllText(spec, $"""
            name: chaos
            dataset:
              train: train
              validation: 0.25
            model: resnet18
            weights: random
            input_size: 32
            strategy: from-scratch
            lr: [0.01, 0.02, 0.03]
            optimizer: sgd
            epochs: {Epochs}
            batch_size: 8
            segment_epochs: 1
            seed: 11
            parallelism: 2
            """);
        return spec;
    }

    private ClusterProcess StartWorker()
    {
        string id = $"w{++_workerCount}-{_cluster.Name}";
        ClusterProcess worker = _cluster.Worker("--device", "cpu", "--id", id);
        _workers.Add(id, worker);
        return worker;
    }

    /// <summary>A database read that answers null while PostgreSQL is down instead of failing the test.</summary>
    private async Task<T?> ReadAsync<T>(Func<Cluster.Storage.Database.ClusterDbContext, Task<T>> read)
        where T : class
    {
        try
        {
            await using var db = _cluster.Database();
            return await read(db);
        }
        catch (Exception e) when (e is Npgsql.NpgsqlException or InvalidOperationException or DbUpdateException or TimeoutException)
        {
            return null;
        }
    }

    private sealed record Progress(int Segments, int Shards, bool SweepDone, bool FeaturesDone);

    private async Task<Progress?> ProgressAsync(Guid sweep) => await ReadAsync(async db => new Progress(
        await db.Segments.CountAsync(s => s.Status == SegmentStatus.Completed && db.Trials.Any(t => t.Id == s.TrialId && t.SweepId == sweep)),
        await db.FeatureShards.CountAsync(s => s.Status == FeatureShardStatus.Complete),
        await db.Sweeps.AnyAsync(s => s.Id == sweep && s.Status == SweepStatus.Completed),
        await db.FeatureSets.AnyAsync() && await db.FeatureSets.AllAsync(f => f.Status == FeatureSetStatus.Complete)));

    /// <summary>Waits until one more segment or shard is recorded than at <paramref name="since"/> (or everything is
    /// done), so that each fault strikes work in progress rather than piling onto the last one.</summary>
    private async Task<Progress> WaitForProgressAsync(Guid sweep, Progress since, string after) =>
        await Eventually.WaitAsync(async () => await ProgressAsync(sweep) is { } now
            && (now.Segments + now.Shards > since.Segments + since.Shards || (now.SweepDone && now.FeaturesDone)) ? now : null,
            s_deadline, $"progress after {after}");

    private Task<Guid> SubmitAsync(string spec) => _cluster.SubmitSweepAsync(spec, s_deadline);

    [Fact]
    public async Task A_sweep_and_an_extraction_survive_killed_workers_crashed_servers_and_a_killed_coordinator_with_the_results_of_a_calm_run()
    {
        string spec = WriteSpec();
        string dataset = Path.Combine(Images, "photos");
        TestImages.WriteDataset(dataset, goodPerClass: 12, hostile: false);
        _serve = _cluster.Coordinator("serve", "--cluster");
        StartWorker();
        StartWorker();
        var clock = Stopwatch.StartNew();
        Guid sweep = await SubmitAsync(spec);
        ClusterProcess extract = _cluster.Coordinator("extract", "--cluster", "--dataset", dataset, "--shard-size", "2", "--batch-size", "2", "--format", "json");

        // The faults, in turn, each once the cluster has recorded something since the last one.
        var faults = new List<(string Name, Func<Task> Inject)>
        {
            ("kill -9 a busy worker", KillBusyWorkerAsync),
            ("crash RabbitMQ", () => TestServers.CrashRestartAsync("rabbitmq")),
            ("kill -9 a busy worker", KillBusyWorkerAsync),
            ("crash PostgreSQL", () => TestServers.CrashRestartAsync("postgres")),
            ("kill -9 the coordinator service", async () =>
            {
                _serve.Kill();
                await _serve.WaitForExitAsync(s_deadline);
                _serve = _cluster.Coordinator("serve", "--cluster");
            }),
            ("kill -9 a busy worker", KillBusyWorkerAsync),
            ("SIGTERM a busy worker", async () =>
            {
                ClusterProcess worker = await BusyWorkerAsync();
                worker.Terminate();
                await worker.WaitForExitAsync(s_deadline);
                StartWorker();
            }),
        };
        var log = new StringBuilder();
        Progress progress = (await ProgressAsync(sweep))!;
        int struckWhileBusy = 0;
        foreach ((string name, Func<Task> inject) in faults)
        {
            progress = await WaitForProgressAsync(sweep, progress, log.Length == 0 ? "the start" : "the last fault");
            bool busy = !(progress.SweepDone && progress.FeaturesDone);
            struckWhileBusy += busy ? 1 : 0;
            log.Append(CultureInfo.InvariantCulture, $"  {clock.Elapsed.TotalSeconds,6:F1} s  {name} ({progress.Segments} segments, {progress.Shards} shards recorded)");
            await inject();
            // The next fault waits for progress made after this one is over (a crashed server is back up).
            progress = await Eventually.WaitAsync(() => ProgressAsync(sweep), s_deadline, "the database to answer after " + name);
            log.AppendLine(CultureInfo.InvariantCulture, $", back at {clock.Elapsed.TotalSeconds:F1} s");
        }

        await Eventually.WaitAsync(async () => await ProgressAsync(sweep) is { SweepDone: true, FeaturesDone: true },
            s_deadline, () => "the sweep and the extraction to complete after the faults\n" + log + _cluster.DescribeProcesses());
        TimeSpan chaosWall = clock.Elapsed;
        (await extract.WaitForExitAsync(s_deadline)).ShouldBe(0, "the extracting CLI outlives the faults\n" + extract.Describe());
        struckWhileBusy.ShouldBeGreaterThanOrEqualTo(faults.Count - 1, "the faults struck running work\n" + log);

        (List<TrialRecord> trials, List<SegmentRecord> segments) = await ShouldHaveTrainedEachTrialOnceAsync(sweep);
        string key = JsonDocument.Parse(extract.StandardOutput).RootElement.GetProperty("key").GetString()!;
        Dictionary<long, float[]> features = await ShouldHaveShardedEachImageOnceAsync(key);

        // The same spec once more with no faults: the same metrics, epoch by epoch, trial by trial.
        clock.Restart();
        Guid calm = await SubmitAsync(spec);
        await Eventually.WaitAsync(async () => await ProgressAsync(calm) is { SweepDone: true }, s_deadline, "the fault-free sweep");
        TimeSpan calmWall = clock.Elapsed;
        await ShouldHaveTrainedEachTrialOnceAsync(calm);
        (await MetricsByTrialAsync(sweep)).ShouldBe(await MetricsByTrialAsync(calm));
        // And the extraction as a calm embedded run computes it.
        Dictionary<long, float[]> reference = await EmbeddedFeaturesAsync(dataset);
        features.Keys.Order().ShouldBe(reference.Keys.Order());
        foreach ((long row, float[] expected) in reference)
        {
            for (int i = 0; i < expected.Length; i++)
            {
                features[row][i].ShouldBe(expected[i], Math.Max(1e-4f, Math.Abs(expected[i]) * 1e-4f), $"row {row}, feature {i}");
            }
        }

        Redone redone = Redone.From(_workers.Values);
        output.WriteLine($"""
            chaos: {faults.Count} faults ({struckWhileBusy} while work was in flight), {trials.Count} trials x {Epochs} segments, {features.Count} images in shards of 2
            {log.ToString().TrimEnd()}
              work redone: {redone.Epochs} epochs trained again, {redone.Shards} shards extracted again; {redone.Interrupted} jobs interrupted; {redone.AlreadyRecorded} redeliveries found their job already recorded
              workers started: {_workerCount}
              wall: {chaosWall.TotalSeconds:F1} s with faults (sweep and extraction), {calmWall.TotalSeconds:F1} s for the same sweep without
            """);
    }

    /// <summary>What the workers' logs say was done more than once: the cost of the faults, and the redeliveries behind it.</summary>
    private sealed record Redone(int Epochs, int Shards, int Interrupted, int AlreadyRecorded)
    {
        public static Redone From(IEnumerable<ClusterProcess> workers)
        {
            string[] lines = [.. workers.SelectMany(w => w.Lines)];
            int Again(string pattern)
            {
                string[] done = [.. lines.Select(l => System.Text.RegularExpressions.Regex.Match(l, pattern)).Where(m => m.Success).Select(m => m.Value)];
                return done.Length - done.Distinct().Count();
            }
            return new Redone(
                Again(@"Trial \S+ epoch \d+ "),
                Again(@"Shard \d+ of \S+ "),
                lines.Count(l => l.Contains("stopped before it finished", StringComparison.Ordinal)),
                lines.Count(l => l.Contains("already recorded", StringComparison.Ordinal) || l.Contains("recorded concurrently", StringComparison.Ordinal)));
        }
    }

    /// <summary>A live worker whose heartbeat names a job, so that the fault costs work in flight; any live worker when
    /// none is busy within a while (the work may be nearly done).</summary>
    private async Task<ClusterProcess> BusyWorkerAsync()
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromSeconds(30))
        {
            DateTime fresh = DateTime.UtcNow.AddSeconds(-3);
            List<string>? busy = await ReadAsync(db => db.Workers.AsNoTracking()
                .Where(w => w.CurrentJob != null && w.LastHeartbeat > fresh).Select(w => w.Id).ToListAsync());
            List<string> live = [.. (busy ?? []).Where(id => _workers.TryGetValue(id, out ClusterProcess? w) && !w.HasExited)];
            if (live.Count > 0)
            {
                return _workers[live[Random.Shared.Next(live.Count)]];
            }
            await Task.Delay(200);
        }
        List<ClusterProcess> any = [.. _workers.Values.Where(w => !w.HasExited)];
        return any[Random.Shared.Next(any.Count)];
    }

    private async Task KillBusyWorkerAsync()
    {
        ClusterProcess victim = await BusyWorkerAsync();
        victim.Kill();
        await victim.WaitForExitAsync(s_deadline);
        StartWorker();
    }

    /// <summary>Every trial completed, with one completed segment per epoch and one metric row per epoch and split; none
    /// left running or dispatched.</summary>
    private async Task<(List<TrialRecord>, List<SegmentRecord>)> ShouldHaveTrainedEachTrialOnceAsync(Guid sweep)
    {
        await using var db = _cluster.Database();
        List<TrialRecord> trials = await db.Trials.AsNoTracking().Where(t => t.SweepId == sweep).ToListAsync();
        trials.Count.ShouldBe(Trials);
        trials.ShouldAllBe(t => t.Status == TrialStatus.Completed && t.CompletedSegments == Epochs && t.DispatchedSegment == null);
        Guid[] ids = [.. trials.Select(t => t.Id)];
        List<SegmentRecord> segments = await db.Segments.AsNoTracking().Where(s => ids.Contains(s.TrialId)).ToListAsync();
        segments.GroupBy(s => s.TrialId).ShouldAllBe(g => g.Select(s => s.Index).Order().SequenceEqual(Enumerable.Range(0, Epochs)));
        segments.ShouldAllBe(s => s.Status == SegmentStatus.Completed);
        foreach (TrialRecord trial in trials)
        {
            // Retention keeps a finished trial's best checkpoint, whole; the others' rows no longer name a file.
            SegmentRecord best = segments.Single(s => s.TrialId == trial.Id && s.Index == trial.BestSegment);
            string file = Path.Combine(_cluster.StorageRoot, best.CheckpointPath!);
            Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(file))).ShouldBe(best.Sha256, best.CheckpointPath);
        }
        segments.Where(s => s.CheckpointPath != null).ShouldAllBe(s => File.Exists(Path.Combine(_cluster.StorageRoot, s.CheckpointPath!)),
            "no segment row points at a missing checkpoint");
        List<EpochMetricRecord> metrics = await db.EpochMetrics.AsNoTracking().Where(m => ids.Contains(m.TrialId)).ToListAsync();
        metrics.GroupBy(m => (m.TrialId, m.Epoch, m.Split)).ShouldAllBe(g => g.Count() == 1);
        metrics.Count(m => m.Split != "test").ShouldBe(Trials * Epochs * 2, "train and validation rows for each epoch");
        return (trials, segments);
    }

    private async Task<List<string>> MetricsByTrialAsync(Guid sweep)
    {
        await using var db = _cluster.Database();
        var rows = await (from m in db.EpochMetrics.AsNoTracking()
                          join t in db.Trials.AsNoTracking() on m.TrialId equals t.Id
                          where t.SweepId == sweep
                          select new { t.Number, t.Hyperparameters, m.Epoch, m.Split, m.Loss, m.Accuracy }).ToListAsync();
        return [.. rows.Select(r => $"{r.Number} {r.Hyperparameters} {r.Epoch} {r.Split} {Math.Round(r.Loss, 9):R} {r.Accuracy:R}").Order()];
    }

    /// <summary>Every shard complete, its file matching its sha256, and every image in exactly one shard; returns the
    /// features by manifest row.</summary>
    private async Task<Dictionary<long, float[]>> ShouldHaveShardedEachImageOnceAsync(string key)
    {
        await using var db = _cluster.Database();
        List<FeatureShardRecord> shards = await db.FeatureShards.AsNoTracking().Where(s => s.FeatureSetKey == key).OrderBy(s => s.Index).ToListAsync();
        shards.Select(s => s.Index).ShouldBe(Enumerable.Range(0, shards.Count));
        var features = new Dictionary<long, float[]>();
        foreach (FeatureShardRecord shard in shards)
        {
            shard.Status.ShouldBe(FeatureShardStatus.Complete);
            string file = Path.Combine(_cluster.StorageRoot, shard.Path);
            Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(file))).ShouldBe(shard.Sha256, shard.Path);
            foreach ((long row, float[] values) in Rows(file))
            {
                features.TryAdd(row, values).ShouldBeTrue($"row {row} in one shard only");
            }
        }
        features.Count.ShouldBe(24);
        return features;
    }

    private static IEnumerable<(long Row, float[] Features)> Rows(string shardFile)
    {
        SafetensorsFile tensors = SafetensorsFile.Read(shardFile);
        long[] rows = tensors.Longs("rows");
        float[] values = tensors.Floats("features");
        int width = values.Length / rows.Length;
        for (int i = 0; i < rows.Length; i++)
        {
            yield return (rows[i], values[(i * width)..((i + 1) * width)]);
        }
    }

    /// <summary>The same extraction embedded in one process (no servers, its own folder), with nothing going wrong.</summary>
    private async Task<Dictionary<long, float[]>> EmbeddedFeaturesAsync(string dataset)
    {
        string folder = Directory.CreateDirectory(Path.Combine(_cluster.StorageRoot, "calm-embedded")).FullName;
        var environment = new Dictionary<string, string>
        {
            ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1",
            ["Worker__TorchThreads"] = "1",
            ["Worker__KernelCache"] = _cluster.Environment["Worker__KernelCache"],
        };
        await using ClusterProcess run = ClusterProcess.Start(RepoPaths.CoordinatorDll, environment, folder,
            "extract", "--dataset", dataset, "--shard-size", "5", "--format", "json");
        (await run.WaitForExitAsync(s_deadline)).ShouldBe(0, run.Describe());
        string key = JsonDocument.Parse(run.StandardOutput).RootElement.GetProperty("key").GetString()!;
        return Directory.GetFiles(Path.Combine(folder, ".cluster", "features", key), "*.safetensors", SearchOption.AllDirectories)
            .SelectMany(Rows).ToDictionary(r => r.Row, r => r.Features);
    }
}
