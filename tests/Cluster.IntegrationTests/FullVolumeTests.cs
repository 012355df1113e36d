using Cluster.IntegrationTests.Support;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Files;
using Cluster.TestSupport;
using Cluster.TestSupport.Training;
using Microsoft.EntityFrameworkCore;
using Shouldly;

namespace Cluster.IntegrationTests;

/// <summary>
/// Item 5 of the chaos issue on real processes: the shared volume (a tmpfs of its own mounted as the storage root) fills
/// up while a worker trains. The segment that cannot write its checkpoint is neither failed nor recorded: the worker
/// waits, says so, and once space returns writes it and the sweep completes with one segment per epoch, no torn
/// temporary file, and no row naming a missing or different file. While it waits, the volume is also remounted
/// read-only: the wait goes on under the new fault, which the worker's log and `coordinator workers` both name.
/// </summary>
public sealed class FullVolumeTests : IAsyncLifetime
{
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(8);
    private IsolatedCluster _cluster = null!;

    public async Task InitializeAsync()
    {
        _cluster = await IsolatedCluster.CreateAsync();
        await _cluster.MigrateAsync(s_deadline);
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    private string WorkerId => "w-" + _cluster.Name;

    /// <summary>Why the live worker's job is held, as recorded from its heartbeats (null while it works).</summary>
    private async Task<string?> RecordedWaitingAsync() =>
        await _cluster.RecordedWorkerAsync(WorkerId) is { Status: WorkerStatus.Alive } worker ? worker.Waiting : null;

    /// <summary>Why `coordinator workers` says the job is held: run once the recorded row shows a reason.</summary>
    private async Task<string?> ListedWaitingAsync() =>
        await _cluster.ListedWorkerAsync(WorkerId, s_deadline, all: false) is { } row ? row.GetProperty("waiting").GetString() : null;

    [FactWhenMountable]
    public async Task A_volume_that_fills_mid_sweep_holds_the_segment_until_space_returns_and_nothing_is_lost_or_torn()
    {
        string root = _cluster.StorageRoot;
        // Unmounted (lazily: the processes may still hold files there until the cluster's disposal stops them) before
        // that disposal removes the folder.
        using TmpfsVolume volume = TmpfsVolume.Mount("768m", at: root);
        var files = new FileStore(root);
        string images = Path.Combine(root, "..", $"images-{_cluster.Name}");
        StripeImages.Write(Path.Combine(images, "train"), perClass: 12);
        string spec = Path.Combine(images, "full.yaml");
        await File.WriteAllTextAsync(spec, """
            name: full-volume
            dataset:
              train: train
              validation: 0.25
            model: resnet18
            weights: random
            input_size: 32
            strategy: from-scratch
            lr: 0.01
            optimizer: sgd
            epochs: 4
            batch_size: 8
            segment_epochs: 1
            seed: 3
            parallelism: 1
            """);
        _cluster.Environment["Worker__StorageRetrySeconds"] = "0.5";
        _cluster.Coordinator("serve", "--cluster");
        ClusterProcess worker = _cluster.Worker("--device", "cpu", "--id", WorkerId);
        Guid sweepId = await _cluster.SubmitSweepAsync(spec, s_deadline);

        await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            return await db.Segments.AnyAsync(s => s.Status == SegmentStatus.Completed);
        }, s_deadline, "the first segment to be recorded");
        string filler = await volume.FillAsync();
        await Eventually.WaitAsync(() => Task.FromResult(worker.Lines.Any(l => l.Contains("waits for the shared volume", StringComparison.Ordinal))),
            s_deadline, "the worker to wait for the full volume");

        // `coordinator workers` says why the worker's job is held (from its heartbeats), and that it is alive.
        await Eventually.WaitAsync(async () => await RecordedWaitingAsync() is string waiting && waiting.StartsWith("the shared volume: ", StringComparison.Ordinal),
            s_deadline, "the worker's heartbeat to say it waits for the shared volume");
        (await ListedWaitingAsync()).ShouldNotBeNull("listed alive, with the reason its job is held").ShouldStartWith("the shared volume: ");

        int recordedWhileFull;
        await using (var db = _cluster.Database())
        {
            (await db.Trials.AsNoTracking().SingleAsync(t => t.SweepId == sweepId)).Status.ShouldBe(TrialStatus.Running, "a full volume fails no trial");
            recordedWhileFull = await db.Segments.CountAsync(s => s.Status == SegmentStatus.Completed);
        }
        recordedWhileFull.ShouldBeLessThan(4, "the waiting segment is not recorded");

        // Then the volume goes read-only under the waiting job (an operator's remount, or a kernel's after I/O errors):
        // the worker says the fault changed, its heartbeats carry the new reason, and still nothing is failed.
        volume.Remount("ro");
        await Eventually.WaitAsync(() => Task.FromResult(worker.Lines.Any(l => l.Contains("now waits for the shared volume", StringComparison.Ordinal)
                && l.Contains("Read-only file system", StringComparison.Ordinal))),
            s_deadline, "the worker to say it now waits for a read-only volume");
        await Eventually.WaitAsync(async () => await RecordedWaitingAsync() is string waiting && waiting.Contains("Read-only file system", StringComparison.Ordinal),
            s_deadline, "the worker's heartbeat to give the read-only volume as the reason");
        (await ListedWaitingAsync()).ShouldNotBeNull("listed alive, with the reason its job is held").ShouldContain("Read-only file system");
        await using (var db = _cluster.Database())
        {
            (await db.Trials.AsNoTracking().SingleAsync(t => t.SweepId == sweepId)).Status.ShouldBe(TrialStatus.Running, "a read-only volume fails no trial");
            (await db.Segments.CountAsync(s => s.Status == SegmentStatus.Completed)).ShouldBe(recordedWhileFull, "nothing is recorded while the volume is read-only");
        }

        volume.Remount("rw");
        File.Delete(filler);
        await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            return (await db.Sweeps.AsNoTracking().SingleAsync(s => s.Id == sweepId)).Status == SweepStatus.Completed;
        }, s_deadline, "the sweep to complete once space returned");

        await using (var db = _cluster.Database())
        {
            TrialRecord trial = await db.Trials.AsNoTracking().SingleAsync(t => t.SweepId == sweepId);
            trial.Status.ShouldBe(TrialStatus.Completed, _cluster.DescribeProcesses());
            List<SegmentRecord> segments = await db.Segments.AsNoTracking().Where(s => s.TrialId == trial.Id).ToListAsync();
            segments.Select(s => s.Index).Order().ToArray().ShouldBe([0, 1, 2, 3], "one segment per epoch, none twice");
            (await db.EpochMetrics.CountAsync(m => m.TrialId == trial.Id)).ShouldBe(8, "train and validation rows per epoch, none twice");
            foreach (SegmentRecord segment in segments.Where(s => s.CheckpointPath is not null && File.Exists(Path.Combine(root, s.CheckpointPath))))
            {
                (await files.Sha256Async(segment.CheckpointPath!, CancellationToken.None)).ShouldBe(segment.Sha256, $"segment {segment.Index}'s checkpoint is whole");
            }
            string kept = trial.Checkpoint.ShouldNotBeNull();
            File.Exists(Path.IsPathRooted(kept) ? kept : Path.Combine(root, kept)).ShouldBeTrue("the trial's kept checkpoint is on the volume");
        }
        Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories)
            .Where(f => Path.GetFileName(f).StartsWith('.') && !Path.GetFileName(f).StartsWith(".write-probe", StringComparison.Ordinal))
            .ShouldBeEmpty("no temporary file of a failed write is left behind");
        worker.Lines.ShouldContain(l => l.Contains("takes writes again", StringComparison.Ordinal), worker.Describe());
        await Eventually.WaitAsync(async () =>
        {
            await using var db = _cluster.Database();
            return (await db.Workers.AsNoTracking().SingleAsync()).Waiting is null;
        }, s_deadline, "the worker's heartbeats to stop reporting the wait");
    }
}
