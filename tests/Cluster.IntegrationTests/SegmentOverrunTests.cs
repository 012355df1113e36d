using Cluster.IntegrationTests.Support;
using Cluster.Storage.Database.Entities;
using Cluster.TestSupport.Training;
using Microsoft.EntityFrameworkCore;
using Shouldly;
using Xunit.Abstractions;

namespace Cluster.IntegrationTests;

/// <summary>
/// A segment that overruns RabbitMQ's consumer timeout on a live worker (one configured without the segment bound):
/// the broker takes the delivery back, the worker's job is cancelled rather than left training a copy nobody will
/// acknowledge, a worker with the bound resumes the trial, and every segment is recorded once.
/// </summary>
[Collection(nameof(ServerFaultsCollection))]
public sealed class SegmentOverrunTests(ITestOutputHelper output) : IAsyncLifetime
{
    // About 2.4 s an epoch on a 2-core Xeon (128 px, 72 training images; 1.6 s with 48, measured): the unbounded segment of
    // all sixteen lasts more than twice the timeout, and on a machine twice as fast still more than it; the bounded worker's
    // segments hold two or three epochs.
    private const int Epochs = 16;
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(6);
    private IsolatedCluster _cluster = null!;

    public async Task InitializeAsync()
    {
        _cluster = await IsolatedCluster.CreateAsync();
        await _cluster.MigrateAsync(s_deadline);
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    [Fact]
    public async Task An_overrun_delivery_is_taken_back_its_job_stops_and_a_bounded_worker_resumes_the_trial_recording_each_segment_once()
    {
        // The timeout short, and checked every second instead of every minute (RabbitMQ 3.10 checks it on the channel's
        // tick); both are read when a channel opens, so they are set before any process connects.
        await using BrokerSetting timeout = await BrokerSetting.SetAsync("consumer_timeout", 15_000);
        await using BrokerSetting tick = await BrokerSetting.SetAsync("channel_tick_interval", 1_000);
        string images = Path.Combine(_cluster.StorageRoot, "..", $"images-{_cluster.Name}");
        StripeImages.Write(Path.Combine(images, "train"), perClass: 48);
        string spec = Path.Combine(images, "overrun.yaml");
        File.WriteAllText(spec, $"""
            name: overrun
            dataset:
              train: train
              validation: 0.25
            model: resnet18
            weights: random
            input_size: 128
            strategy: from-scratch
            lr: 0.01
            optimizer: sgd
            epochs: {Epochs}
            batch_size: 8
            segment_epochs: {Epochs}
            seed: 5
            """);
        _cluster.Coordinator("serve", "--cluster");
        // The misconfigured worker: no bound, so its one segment of all the epochs outlasts the timeout.
        _cluster.Environment["Worker__SegmentTimeLimitSeconds"] = "-1";
        string unbounded = "unbounded-" + _cluster.Name;
        ClusterProcess overrunner = _cluster.Worker("--device", "cpu", "--id", unbounded);
        Guid sweep = await _cluster.SubmitSweepAsync(spec, s_deadline);
        await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            return await db.Trials.AnyAsync(t => t.SweepId == sweep && t.Progress != null);
        }, s_deadline, "the unbounded worker to be training");
        // A worker as deployed: segments end well inside the timeout.
        _cluster.Environment["Worker__SegmentTimeLimitSeconds"] = "6";
        string bounded = "bounded-" + _cluster.Name;
        _cluster.Worker("--device", "cpu", "--id", bounded);

        // The overrun must happen before the trial could end: if the unbounded worker finished its segment inside the
        // timeout, the test proves nothing, and says so instead of waiting out its deadline.
        await Eventually.WaitAsync(async () =>
        {
            if (overrunner.Lines.Any(l => l.Contains("stopped before it finished", StringComparison.Ordinal)))
            {
                return true;
            }
            await using var db = _cluster.Database();
            SweepStatus status = (await db.Sweeps.AsNoTracking().SingleAsync(s => s.Id == sweep)).Status;
            return status is SweepStatus.Completed or SweepStatus.Failed
                ? throw new InvalidOperationException($"The sweep ended ({status}) before the unbounded worker's delivery was taken back: " +
                    $"its segment did not outlast the consumer timeout.\n{await DescribeSegmentsAsync(sweep)}\n{overrunner.Describe()}")
                : false;
        }, s_deadline, "the broker to take the overrun delivery back and the worker's job to stop");
        // It would take the delivery back only to overrun again: out of the way, as an operator would fix its settings. Killed,
        // so that nothing it took since its channel reopened can be recorded, however long a graceful stop would take.
        overrunner.Kill();
        await overrunner.WaitForExitAsync(s_deadline);

        await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            return (await db.Sweeps.AsNoTracking().SingleAsync(s => s.Id == sweep)).Status is SweepStatus.Completed or SweepStatus.Failed;
        }, s_deadline, () => "the sweep to end\n" + _cluster.DescribeProcesses());
        await using (var db = _cluster.Database())
        {
            TrialRecord trial = await db.Trials.AsNoTracking().SingleAsync(t => t.SweepId == sweep);
            trial.Status.ShouldBe(TrialStatus.Completed, trial.FailureReason + "\n" + _cluster.DescribeProcesses());
            trial.Epoch.ShouldBe(Epochs - 1);
            List<SegmentRecord> segments = await db.Segments.AsNoTracking().Where(s => s.TrialId == trial.Id).OrderBy(s => s.Index).ToListAsync();
            segments.Select(s => s.Index).ShouldBe(Enumerable.Range(0, segments.Count));
            segments.Count.ShouldBeGreaterThan(1, "the bounded worker trained the epochs in several segments");
            string described = await DescribeSegmentsAsync(sweep);
            output.WriteLine(described);
            segments.ShouldAllBe(s => s.Status == SegmentStatus.Completed && s.WorkerId == bounded, "the overrun copy never recorded\n" + described);
            // The segments cover the epochs once each, in order.
            segments.Select(s => (s.EpochFrom, s.LastEpoch)).Zip(segments.Skip(1)).ShouldAllBe(p => p.First.LastEpoch + 1 == p.Second.EpochFrom);
            segments[^1].LastEpoch.ShouldBe(Epochs - 1);
            List<EpochMetricRecord> metrics = await db.EpochMetrics.AsNoTracking().Where(m => m.TrialId == trial.Id && m.Split != "test").ToListAsync();
            metrics.GroupBy(m => (m.Epoch, m.Split)).ShouldAllBe(g => g.Count() == 1);
            metrics.Count.ShouldBe(Epochs * 2);
        }
    }

    /// <summary>Each segment's row and how long its epochs took: what a failure needs to be understood.</summary>
    private async Task<string> DescribeSegmentsAsync(Guid sweep)
    {
        await using var db = _cluster.Database();
        Guid trial = await db.Trials.AsNoTracking().Where(t => t.SweepId == sweep).Select(t => t.Id).SingleAsync();
        List<SegmentRecord> segments = await db.Segments.AsNoTracking().Where(s => s.TrialId == trial).OrderBy(s => s.Index).ToListAsync();
        List<double> epochSeconds = await db.EpochMetrics.AsNoTracking().Where(m => m.TrialId == trial && m.Split == "train")
            .OrderBy(m => m.Epoch).Select(m => m.Seconds).ToListAsync();
        return string.Join("\n", segments.Select(s =>
                $"segment {s.Index}: epochs [{s.EpochFrom}, {s.EpochTo}) last {s.LastEpoch} {s.Status} by {s.WorkerId} after {s.Attempts} attempt(s), {s.Seconds:F1} s {s.FailureReason}"))
            + $"\ntrain epochs took {string.Join(", ", epochSeconds.Select(x => x.ToString("F1", System.Globalization.CultureInfo.InvariantCulture)))} s";
    }
}
