using System.Text.Json;
using Cluster.IntegrationTests.Support;
using Cluster.Storage.Database.Entities;
using Cluster.TestSupport.Training;
using Microsoft.EntityFrameworkCore;
using Shouldly;

namespace Cluster.IntegrationTests;

/// <summary>
/// A trial on real processes (RabbitMQ, PostgreSQL, `coordinator serve`, `gpu-worker`s): a worker killed while it trains
/// a segment leaves the segment to RabbitMQ, the next worker resumes from the last checkpoint, and the trial ends with
/// the metrics of an uninterrupted run of the same spec.
/// </summary>
public sealed class TrainingResumeTests : IAsyncLifetime
{
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(8);
    private IsolatedCluster _cluster = null!;

    public async Task InitializeAsync()
    {
        _cluster = await IsolatedCluster.CreateAsync();
        await _cluster.MigrateAsync(s_deadline);
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    private string WriteSpec()
    {
        string images = Path.Combine(_cluster.StorageRoot, "..", $"images-{_cluster.Name}");
        StripeImages.Write(Path.Combine(images, "train"), perClass: 40);
        string spec = Path.Combine(images, "spec.yaml");
        File.WriteAllText(spec, """
            name: resume
            dataset:
              train: train
              validation: 0.25
            model: resnet18
            weights: random
            input_size: 32
            strategy: from-scratch
            lr: 0.01
            optimizer: sgd
            epochs: 3
            batch_size: 4
            segment_epochs: 1
            seed: 9
            """);
        return spec;
    }

    private async Task<List<EpochMetricRecord>> MetricsAsync(Guid trial)
    {
        await using var db = _cluster.Database();
        return await db.EpochMetrics.AsNoTracking().Where(m => m.TrialId == trial).OrderBy(m => m.Epoch).ThenBy(m => m.Split).ToListAsync();
    }

    private static Guid TrialOf(ClusterProcess run)
    {
        using JsonDocument results = JsonDocument.Parse(run.StandardOutput);
        JsonElement trial = results.RootElement.GetProperty("trials")[0];
        trial.GetProperty("status").GetString().ShouldBe("completed", run.StandardOutput);
        return Guid.Parse(trial.GetProperty("id").GetString()!);
    }

    [Fact]
    public async Task A_worker_killed_mid_segment_is_resumed_from_the_last_checkpoint_and_the_trial_ends_as_an_uninterrupted_one()
    {
        string spec = WriteSpec();
        _cluster.Coordinator("serve", "--cluster");
        ClusterProcess first = _cluster.Worker("--device", "cpu", "--id", "doomed-" + _cluster.Name);
        ClusterProcess run = _cluster.Coordinator("sweep", "run", spec, "--cluster", "--format", "json");

        // Segment 0 recorded and segment 1 under way on the first worker (its progress reported): then the worker dies.
        TrialRecord running = await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            TrialRecord? trial = await db.Trials.AsNoTracking().FirstOrDefaultAsync();
            return trial?.Progress?.Contains("\"segment\":1", StringComparison.Ordinal) == true ? trial : null;
        }, s_deadline, "segment 1 to be training on the first worker");
        Guid trialId = running.Id;
        using (var kill = System.Diagnostics.Process.Start("kill", ["-KILL", first.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
        {
            await kill.WaitForExitAsync();
        }
        await first.WaitForExitAsync(s_deadline);
        string survivor = "survivor-" + _cluster.Name;
        _cluster.Worker("--device", "cpu", "--id", survivor);

        (await run.WaitForExitAsync(s_deadline)).ShouldBe(0, _cluster.DescribeProcesses());
        TrialOf(run).ShouldBe(trialId);
        await using (var db = _cluster.Database())
        {
            List<SegmentRecord> segments = await db.Segments.AsNoTracking().Where(s => s.TrialId == trialId).OrderBy(s => s.Index).ToListAsync();
            segments.Select(s => s.Index).ShouldBe([0, 1, 2]);
            segments.ShouldAllBe(s => s.Status == SegmentStatus.Completed);
            segments[0].WorkerId.ShouldBe("doomed-" + _cluster.Name);
            segments[1].WorkerId.ShouldBe(survivor, "the killed worker never recorded segment 1");
        }

        // The same spec uninterrupted, on the surviving worker: the same metrics, epoch by epoch.
        (int code, ClusterProcess again) = await _cluster.RunCoordinatorAsync(s_deadline, "sweep", "run", spec, "--cluster", "--format", "json");
        code.ShouldBe(0, _cluster.DescribeProcesses());
        List<EpochMetricRecord> resumed = await MetricsAsync(trialId);
        List<EpochMetricRecord> straight = await MetricsAsync(TrialOf(again));
        resumed.Count.ShouldBe(6);
        resumed.Select(m => (m.Epoch, m.Split, Math.Round(m.Loss, 9), m.Accuracy)).ShouldBe(straight.Select(m => (m.Epoch, m.Split, Math.Round(m.Loss, 9), m.Accuracy)));
    }
}
