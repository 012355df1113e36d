using System.Globalization;
using System.Text.Json;
using Cluster.Contracts;
using Cluster.IntegrationTests.Support;
using Cluster.Storage.Database.Entities;
using Cluster.TestSupport.Training;
using Microsoft.EntityFrameworkCore;
using Shouldly;

namespace Cluster.IntegrationTests;

/// <summary>
/// Locality on real processes (RabbitMQ, PostgreSQL, `coordinator serve`, two `gpu-worker`s): the segments of trials on
/// one frozen prefix go to the worker that holds its features in memory, through that worker's own queue; when that
/// worker is killed, what was sent to it moves on to the shared queue and the other worker finishes the sweep, no
/// segment trained twice.
/// </summary>
public sealed class LocalityTests : IAsyncLifetime
{
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(8);
    private IsolatedCluster _cluster = null!;

    public async Task InitializeAsync()
    {
        _cluster = await IsolatedCluster.CreateAsync();
        (int code, ClusterProcess migrate) = await _cluster.RunCoordinatorAsync(s_deadline, "db", "migrate");
        code.ShouldBe(0, migrate.Describe());
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    /// <summary>fine-tune-top at layer3 (its features materialized), one epoch a segment, one trial at a time.</summary>
    private string WriteSpec(string name, string lrs, int epochs)
    {
        string images = Path.Combine(_cluster.StorageRoot, "..", $"images-{_cluster.Name}");
        StripeImages.Write(Path.Combine(images, "train"), perClass: 16);
        string spec = Path.Combine(images, $"{name}.yaml");
        File.WriteAllText(spec, $"""
            name: {name}
            dataset:
              train: train
              validation: 0.25
            model: resnet18
            weights: random
            input_size: 32
            strategy: fine-tune-top
            cutoff: layer3
            lr: {lrs}
            optimizer: sgd
            epochs: {epochs}
            batch_size: 8
            segment_epochs: 1
            seed: 9
            parallelism: 1
            """);
        return spec;
    }

    private async Task<Guid> SubmitAsync(string spec)
    {
        (int code, ClusterProcess submit) = await _cluster.RunCoordinatorAsync(s_deadline, "sweep", "submit", spec, "--cluster", "--format", "json");
        code.ShouldBe(0, submit.Describe());
        using JsonDocument json = JsonDocument.Parse(submit.StandardOutput);
        return json.RootElement.GetProperty("sweep").GetGuid();
    }

    private async Task WaitForCompletedAsync(Guid sweepId) => await Eventually.WaitAsync(async () =>
    {
        await using var db = _cluster.Database();
        return (await db.Sweeps.AsNoTracking().SingleOrDefaultAsync(s => s.Id == sweepId))?.Status == SweepStatus.Completed;
    }, s_deadline, "the sweep to complete");

    /// <summary>Both workers' own queues exist with a consumer: a directed segment has somewhere to go from the start.</summary>
    private async Task WaitForOwnQueuesAsync(params string[] workers)
    {
        foreach (string worker in workers)
        {
            await Eventually.WaitAsync(async () => (await _cluster.QueueAsync(QueueNames.WorkerQueue(worker)))?.Consumers == 1,
                s_deadline, $"worker {worker}'s own queue to have its consumer");
        }
    }

    /// <summary>Every trial completed with one completed segment per epoch, each index once.</summary>
    private async Task<List<SegmentRecord>> ShouldHaveTrainedEachSegmentOnceAsync(Guid sweepId, int trials, int epochs)
    {
        await using var db = _cluster.Database();
        List<TrialRecord> recorded = await db.Trials.AsNoTracking().Where(t => t.SweepId == sweepId).ToListAsync();
        recorded.Count.ShouldBe(trials);
        recorded.ShouldAllBe(t => t.Status == TrialStatus.Completed && t.CompletedSegments == epochs && t.DispatchedSegment == null);
        Guid[] ids = [.. recorded.Select(t => t.Id)];
        List<SegmentRecord> segments = await db.Segments.AsNoTracking().Where(s => ids.Contains(s.TrialId)).OrderBy(s => s.StartedAt).ToListAsync();
        segments.GroupBy(s => s.TrialId).ShouldAllBe(g => g.Select(s => s.Index).Order().SequenceEqual(Enumerable.Range(0, epochs)));
        segments.ShouldAllBe(s => s.Status == SegmentStatus.Completed);
        return segments;
    }

    [Fact]
    public async Task Segments_of_one_prefix_go_to_the_worker_that_holds_its_features()
    {
        string spec = WriteSpec("locality", "[0.01, 0.02]", epochs: 4);
        string a = "a-" + _cluster.Name, b = "b-" + _cluster.Name;
        ClusterProcess serve = _cluster.Coordinator("serve", "--cluster");
        _cluster.Worker("--device", "cpu", "--id", a);
        _cluster.Worker("--device", "cpu", "--id", b);
        await WaitForOwnQueuesAsync(a, b);
        Guid sweepId = await SubmitAsync(spec);

        await WaitForCompletedAsync(sweepId);
        List<SegmentRecord> segments = await ShouldHaveTrainedEachSegmentOnceAsync(sweepId, trials: 2, epochs: 4);
        // The first segment went to the shared queue (no one held layer3's features yet); every later one, of both
        // trials, to the worker that had trained on them and was free. From the shared queue alone, two idle workers
        // take turns (the broker's round robin), so eight segments on one worker is what locality does.
        string holder = segments[0].WorkerId.ShouldNotBeNull();
        segments.Select(s => s.WorkerId).ShouldAllBe(w => w == holder, _cluster.DescribeProcesses());
        serve.Lines.Count(l => l.Contains("which holds its features in memory", StringComparison.Ordinal) && l.Contains(holder, StringComparison.Ordinal))
            .ShouldBe(7, "each segment after the first was sent to the holder's own queue");
    }

    [Fact]
    public async Task What_was_sent_to_a_killed_worker_moves_on_to_the_other_and_no_segment_is_trained_twice()
    {
        string spec = WriteSpec("killed", "[0.01, 0.02]", epochs: 4);
        string a = "a-" + _cluster.Name, b = "b-" + _cluster.Name;
        _cluster.Coordinator("serve", "--cluster");
        var workers = new Dictionary<string, ClusterProcess>
        {
            [a] = _cluster.Worker("--device", "cpu", "--id", a),
            [b] = _cluster.Worker("--device", "cpu", "--id", b),
        };
        await WaitForOwnQueuesAsync(a, b);
        Guid sweepId = await SubmitAsync(spec);

        // The worker of the first recorded segment holds the features: its next segment is already on its way to it.
        string holder = null!;
        await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            holder = (await db.Segments.AsNoTracking().Where(s => s.Status == SegmentStatus.Completed).Select(s => s.WorkerId).FirstOrDefaultAsync())!;
            return holder is not null;
        }, s_deadline, "a segment to be recorded");
        DateTime killedAt = DateTime.UtcNow;
        using (var kill = System.Diagnostics.Process.Start("kill", ["-KILL", workers[holder].Id.ToString(CultureInfo.InvariantCulture)]))
        {
            await kill.WaitForExitAsync();
        }
        await workers[holder].WaitForExitAsync(s_deadline);

        await WaitForCompletedAsync(sweepId);
        List<SegmentRecord> segments = await ShouldHaveTrainedEachSegmentOnceAsync(sweepId, trials: 2, epochs: 4);
        string survivor = holder == a ? b : a;
        segments.Where(s => s.StartedAt > killedAt).ShouldNotBeEmpty();
        segments.Where(s => s.StartedAt > killedAt).ShouldAllBe(s => s.WorkerId == survivor, _cluster.DescribeProcesses());
        // Nothing is left behind in the dead worker's queue: it went on to the shared one when its wait ran out.
        QueueCounts? left = await _cluster.QueueAsync(QueueNames.WorkerQueue(holder));
        (left?.Ready ?? 0).ShouldBe(0);
    }
}
