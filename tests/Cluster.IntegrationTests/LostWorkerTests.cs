using Cluster.Coordinator.Cli.Commands;
using Cluster.Coordinator.Orchestration;
using Cluster.IntegrationTests.Support;
using Cluster.Storage.Database.Entities;
using Cluster.TestSupport.Training;
using Microsoft.EntityFrameworkCore;
using Shouldly;
using Xunit.Abstractions;

namespace Cluster.IntegrationTests;

/// <summary>
/// A worker that stops answering while it holds a segment (SIGSTOP: a hung driver, a node frozen under memory pressure)
/// is shown lost, its delivery goes back to the queue once RabbitMQ declares its connection dead, and another worker trains
/// the segment; when the frozen worker comes back it is alive again and takes further work, but the segment it held is
/// recorded once, its epochs' metrics once.
/// </summary>
public sealed class LostWorkerTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const int Epochs = 8;
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(6);
    private IsolatedCluster _cluster = null!;

    public async Task InitializeAsync()
    {
        _cluster = await IsolatedCluster.CreateAsync();
        await _cluster.MigrateAsync(s_deadline);
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    /// <summary>What `coordinator workers` would call the worker now, from its recorded heartbeats.</summary>
    private async Task<string?> StatusAsync(string workerId) =>
        await _cluster.RecordedWorkerAsync(workerId) is { } worker
            ? WorkerLiveness.Of(worker, DateTime.UtcNow, TimeSpan.FromSeconds(WorkersSettings.DefaultLostAfterSeconds))
            : null;

    /// <summary>What `coordinator workers` shows: run once a wait on the recorded rows has seen the status.</summary>
    private async Task<string?> ListedStatusAsync(string workerId) =>
        (await _cluster.ListedWorkerAsync(workerId, s_deadline))?.GetProperty("status").GetString();

    [Fact]
    public async Task A_frozen_worker_is_shown_lost_its_segment_is_trained_elsewhere_and_when_it_returns_the_segment_is_recorded_once()
    {
        // The broker returns a frozen worker's deliveries when it declares the connection dead, after about two missed
        // heartbeats: 3 s ones here (the deployment's default is 20 s).
        _cluster.Environment["RabbitMq__HeartbeatSeconds"] = "3";
        string images = Path.Combine(_cluster.StorageRoot, "..", $"images-{_cluster.Name}");
        StripeImages.Write(Path.Combine(images, "train"), perClass: 16);
        string spec = Path.Combine(images, "lost.yaml");
        File.WriteAllText(spec, $"""
            name: lost-worker
            dataset:
              train: train
              validation: 0.25
            model: resnet18
            weights: random
            input_size: 64
            strategy: from-scratch
            lr: 0.01
            optimizer: sgd
            epochs: {Epochs}
            batch_size: 8
            seed: 7
            """);
        // Segments of a few epochs each, so the trial is mid-way through several when the worker freezes.
        _cluster.Environment["Worker__SegmentTimeLimitSeconds"] = "2";
        var clock = System.Diagnostics.Stopwatch.StartNew();
        void Phase(string what) => output.WriteLine($"{clock.Elapsed.TotalSeconds,6:F1} s  {what}");
        _cluster.Coordinator("serve", "--cluster");
        string frozenId = "frozen-" + _cluster.Name;
        ClusterProcess frozen = _cluster.Worker("--device", "cpu", "--id", frozenId);
        Guid sweep = await _cluster.SubmitSweepAsync(spec, s_deadline);
        Phase("sweep submitted");
        Guid trialId = (await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            return await db.Trials.AsNoTracking().SingleOrDefaultAsync(t => t.SweepId == sweep);
        }, s_deadline, "the sweep's trial")).Id;

        // Frozen while it trains, after its first segment is recorded.
        int held = 0;
        await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            held = await db.Segments.CountAsync(s => s.TrialId == trialId && s.Status == SegmentStatus.Completed);
            WorkerRecord? worker = await db.Workers.AsNoTracking().SingleOrDefaultAsync(w => w.Id == frozenId);
            return held >= 1 && worker?.CurrentJob?.StartsWith("train/", StringComparison.Ordinal) == true;
        }, s_deadline, () => "the worker to train the trial's second segment\n" + frozen.Describe());
        frozen.Freeze();
        await using (var db = _cluster.Database())
        {
            // Segments are sequential: the one it holds is the first not recorded (unless it froze mid-record).
            held = await db.Segments.CountAsync(s => s.TrialId == trialId && s.Status == SegmentStatus.Completed);
        }
        Phase($"froze {frozenId} holding segment {held}");

        await Eventually.WaitAsync(async () => await StatusAsync(frozenId) == WorkerLiveness.Lost, s_deadline, () => "the frozen worker to be silent long enough to be lost");
        (await ListedStatusAsync(frozenId)).ShouldBe(WorkerLiveness.Lost, "coordinator workers shows the frozen worker lost");
        Phase("shown lost");
        string otherId = "other-" + _cluster.Name;
        ClusterProcess other = _cluster.Worker("--device", "cpu", "--id", otherId);
        // The frozen worker's delivery came back and the other worker trains past the held segment.
        await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            return await db.Segments.AnyAsync(s => s.TrialId == trialId && s.Index >= held && s.Status == SegmentStatus.Completed);
        }, s_deadline, () => $"segment {held} to be recorded while its worker is frozen\n" + other.Describe());

        Phase($"segment {held} recorded by the other worker");
        frozen.Thaw();
        await Eventually.WaitAsync(async () => await StatusAsync(frozenId) == WorkerLiveness.Alive, s_deadline, () => "the thawed worker to be alive again\n" + frozen.Describe());
        (await ListedStatusAsync(frozenId)).ShouldBe(WorkerLiveness.Alive, "coordinator workers shows the thawed worker alive");
        Phase("thawed worker alive again");
        await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            return (await db.Sweeps.AsNoTracking().SingleAsync(s => s.Id == sweep)).Status is SweepStatus.Completed or SweepStatus.Failed;
        }, s_deadline, () => "the sweep to end\n" + _cluster.DescribeProcesses());

        Phase("sweep ended");
        await using (var db = _cluster.Database())
        {
            TrialRecord trial = await db.Trials.AsNoTracking().SingleAsync(t => t.SweepId == sweep);
            trial.Status.ShouldBe(TrialStatus.Completed, trial.FailureReason + "\n" + _cluster.DescribeProcesses());
            trial.Epoch.ShouldBe(Epochs - 1);
            List<SegmentRecord> segments = await db.Segments.AsNoTracking().Where(s => s.TrialId == trial.Id).OrderBy(s => s.Index).ToListAsync();
            string described = string.Join("\n", segments.Select(s =>
                $"segment {s.Index}: epochs [{s.EpochFrom}, {s.LastEpoch}] {s.Status} by {s.WorkerId}, {s.Attempts} record(s)"));
            output.WriteLine(described);
            segments.ShouldAllBe(s => s.Status == SegmentStatus.Completed, described);
            // Each segment recorded once (a second record, or a failure, would count another attempt), its epochs in order.
            segments.ShouldAllBe(s => s.Attempts == 1, described);
            segments.Zip(segments.Skip(1)).ShouldAllBe(p => p.First.LastEpoch + 1 == p.Second.EpochFrom, described);
            segments[^1].LastEpoch.ShouldBe(Epochs - 1);
            segments.ShouldContain(s => s.WorkerId == otherId, described);
            List<EpochMetricRecord> metrics = await db.EpochMetrics.AsNoTracking().Where(m => m.TrialId == trial.Id && m.Split != "test").ToListAsync();
            metrics.GroupBy(m => (m.Epoch, m.Split)).ShouldAllBe(g => g.Count() == 1);
            metrics.Count.ShouldBe(Epochs * 2);
        }
        output.WriteLine(string.Join("\n", frozen.Lines.Where(l => l.Contains("stopped before it finished", StringComparison.Ordinal)
            || l.Contains("recorded concurrently", StringComparison.Ordinal) || l.Contains("already recorded", StringComparison.Ordinal))));
    }
}
