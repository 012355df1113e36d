using Cluster.GpuWorker.Hosting;
using Cluster.Storage.Files;
using Cluster.TestSupport;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging.Abstractions;
using Shouldly;

namespace Cluster.GpuWorker.Tests;

/// <summary>The job skeleton's decisions, on delegates standing in for a job's database and computation.</summary>
public sealed class WorkerJobRunnerTests
{
    private readonly JobTracker _tracker = new();
    private readonly List<string> _calls = [];

    private FileStore _volume = new(Directory.CreateTempSubdirectory("job-runner-").FullName);

    private WorkerJobRunner Runner => new(_tracker, new StorageWait(_volume, TimeSpan.FromMilliseconds(50), _tracker, NullLogger<StorageWait>.Instance),
        NullLogger<WorkerJobRunner>.Instance);

    private sealed record Result(string Value);

    private WorkerJob<Result> Job(
        Func<int, Result?>? findRecorded = null,
        Func<CancellationToken, Result>? compute = null,
        Action<Result>? record = null,
        bool canFail = true)
    {
        int finds = 0;
        return new WorkerJob<Result>(
            FindRecorded: _ => Task.FromResult(findRecorded?.Invoke(finds++)),
            Compute: ct =>
            {
                _calls.Add($"compute while tracking {_tracker.CurrentJob}");
                return Task.FromResult(compute is null ? new Result("computed") : compute(ct));
            },
            Record: r =>
            {
                _calls.Add($"record {r.Value}");
                record?.Invoke(r);
                return Task.CompletedTask;
            },
            Completed: (r, before) =>
            {
                _calls.Add($"completed {r.Value} recorded-before={before}");
                return Task.CompletedTask;
            },
            Failed: canFail ? (reason, retriable) =>
            {
                _calls.Add($"failed: {reason}" + (retriable ? " (retriable)" : ""));
                return Task.CompletedTask;
            } : null);
    }

    [Fact]
    public async Task A_job_is_computed_recorded_and_announced_under_its_id()
    {
        await Runner.RunAsync("job/1", Job(), default);

        _calls.ShouldBe(["compute while tracking job/1", "record computed", "completed computed recorded-before=False"]);
        _tracker.CurrentJob.ShouldBeNull();
    }

    [Fact]
    public async Task A_job_already_recorded_is_announced_without_computing()
    {
        await Runner.RunAsync("job/1", Job(findRecorded: _ => new Result("earlier")), default);

        _calls.ShouldBe(["completed earlier recorded-before=True"]);
    }

    [Fact]
    public async Task A_delivery_that_cannot_be_a_repeat_skips_the_lookup_but_a_lost_insert_race_still_finds_the_winner()
    {
        var lookups = new List<int>();
        await Runner.RunAsync("job/1", Job(findRecorded: n => { lookups.Add(n); return new Result("earlier"); }), default, mayBeRecorded: false);
        // Computed without asking (the lookup would have found "earlier"): the record's key is what keeps it single.
        lookups.ShouldBeEmpty();
        _calls.ShouldBe(["compute while tracking job/1", "record computed", "completed computed recorded-before=False"]);

        _calls.Clear();
        await Runner.RunAsync("job/2", Job(findRecorded: n => { lookups.Add(n); return new Result("winner"); }, record: _ => throw new DbUpdateException("duplicate key")),
            default, mayBeRecorded: false);
        lookups.ShouldBe([0]);
        _calls.ShouldBe(["compute while tracking job/2", "record computed", "completed winner recorded-before=True"]);
    }

    [Fact]
    public async Task A_lost_insert_race_announces_the_winner_and_an_unexplained_insert_error_propagates()
    {
        await Runner.RunAsync("job/1", Job(findRecorded: n => n == 0 ? null : new Result("winner"), record: _ => throw new DbUpdateException("duplicate key")), default);
        _calls.ShouldBe(["compute while tracking job/1", "record computed", "completed winner recorded-before=True"]);

        _calls.Clear();
        await Should.ThrowAsync<DbUpdateException>(() =>
            Runner.RunAsync("job/2", Job(record: _ => throw new DbUpdateException("disk full"), canFail: false), default));
        _calls.ShouldBe(["compute while tracking job/2", "record computed"]);
    }

    [Fact]
    public async Task A_job_completed_elsewhere_while_this_delivery_computed_announces_that_result_instead_of_failing()
    {
        // The broker took the delivery back (consumer timeout, lost connection) and another worker completed it.
        await Runner.RunAsync("job/1", Job(findRecorded: n => n == 0 ? null : new Result("elsewhere"),
            compute: _ => throw new AlreadyRecordedException("completed by another delivery")), default);
        _calls.ShouldBe(["compute while tracking job/1", "completed elsewhere recorded-before=True"]);
    }

    [Fact]
    public async Task A_failing_job_is_recorded_as_failed_with_its_reason_whether_explained_or_not()
    {
        await Runner.RunAsync("job/1", Job(compute: _ => throw new ArgumentException("unknown layer 'x'")), default);
        await Runner.RunAsync("job/2", Job(compute: _ => throw new AggregateException(new InvalidOperationException("a bug"))), default);

        _calls.ShouldBe(["compute while tracking job/1", "failed: unknown layer 'x'", "compute while tracking job/2", "failed: a bug (retriable)"]);
        WorkerJobRunner.IsExplained(new ArgumentException("x")).ShouldBeTrue();
        WorkerJobRunner.IsExplained(new InvalidOperationException("x")).ShouldBeFalse();
    }

    [Fact]
    public async Task Shutdown_leaves_the_job_unrecorded_for_redelivery_and_a_job_without_a_failure_step_propagates_its_error()
    {
        using var shutdown = new CancellationTokenSource();
        await shutdown.CancelAsync();
        await Should.ThrowAsync<OperationCanceledException>(() =>
            Runner.RunAsync("job/1", Job(compute: ct => { ct.ThrowIfCancellationRequested(); return new Result("never"); }), shutdown.Token));
        _calls.ShouldBe(["compute while tracking job/1"]);

        _calls.Clear();
        await Should.ThrowAsync<InvalidOperationException>(() =>
            Runner.RunAsync("job/2", Job(compute: _ => throw new InvalidOperationException("libtorch"), canFail: false), default));
        _calls.ShouldBe(["compute while tracking job/2"]);
        _tracker.CurrentJob.ShouldBeNull();
    }

    /// <summary>
    /// A job whose write meets a full volume (a real 1 MiB tmpfs, filled) is neither failed nor dropped: it waits until a
    /// test write succeeds, runs again and is recorded once; one recorded meanwhile by another delivery is announced as
    /// that one's; a shutdown while it waits leaves it unacknowledged.
    /// </summary>
    [FactWhenMountable]
    public async Task A_job_that_meets_a_full_volume_waits_for_space_and_runs_again_instead_of_failing()
    {
        using TmpfsVolume volume = TmpfsVolume.Mount("1m");
        _volume = new FileStore(Path.Combine(volume.Path, "storage"));
        string filler = "";
        async Task<TaskCompletionSource> FillAsync()
        {
            // To the last block, so that the worker's probe fails too until the filler goes.
            filler = await volume.FillAsync();
            return new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        TaskCompletionSource metFull = await FillAsync();
        Result Write(CancellationToken ct)
        {
            try
            {
                _volume.WriteAsync("checkpoints/t/segment-0.safetensors", (stream, token) => stream.WriteAsync(new byte[300 * 1024], token).AsTask(), ct)
                    .GetAwaiter().GetResult();
                return new Result("written");
            }
            catch (IOException)
            {
                metFull.TrySetResult();
                throw;
            }
        }

        Task run = Runner.RunAsync("job/1", Job(compute: Write), default);
        await metFull.Task.WaitAsync(TimeSpan.FromMinutes(1));
        run.IsCompleted.ShouldBeFalse("it waits for space rather than failing");
        // Set before the wait's first delay, so before RunAsync returned its task.
        _tracker.Waiting.ShouldNotBeNull().ShouldStartWith("the shared volume: ");
        _tracker.CurrentJob.ShouldBe("job/1");
        File.Delete(filler);
        await run.WaitAsync(TimeSpan.FromMinutes(1));
        _tracker.Waiting.ShouldBeNull("it no longer waits");
        _calls.ShouldBe(["compute while tracking job/1", "compute while tracking job/1", "record written", "completed written recorded-before=False"]);
        File.Exists(_volume.Resolve("checkpoints/t/segment-0.safetensors")).ShouldBeTrue();

        // Recorded by another delivery while this one waited: its result stands, nothing is computed again.
        _calls.Clear();
        metFull = await FillAsync();
        Task raced = Runner.RunAsync("job/2", Job(findRecorded: n => n == 0 ? null : new Result("elsewhere"), compute: Write), default);
        await metFull.Task.WaitAsync(TimeSpan.FromMinutes(1));
        File.Delete(filler);
        await raced.WaitAsync(TimeSpan.FromMinutes(1));
        _calls.ShouldBe(["compute while tracking job/2", "completed elsewhere recorded-before=True"]);

        // A shutdown while waiting: cancelled, not failed, so the broker delivers it again.
        _calls.Clear();
        metFull = await FillAsync();
        using var shutdown = new CancellationTokenSource();
        Task stopped = Runner.RunAsync("job/3", Job(compute: Write), shutdown.Token);
        await metFull.Task.WaitAsync(TimeSpan.FromMinutes(1));
        await shutdown.CancelAsync();
        await Should.ThrowAsync<OperationCanceledException>(() => stopped.WaitAsync(TimeSpan.FromMinutes(1)));
        _calls.ShouldBe(["compute while tracking job/3"]);
    }

    [Fact]
    public void Consecutive_volume_faults_of_one_job_back_off_so_a_probe_that_passes_for_a_write_that_does_not_fit_cannot_spin()
    {
        var wait = new StorageWait(_volume, TimeSpan.FromSeconds(15), _tracker, NullLogger<StorageWait>.Instance);
        wait.Backoff(1).ShouldBe(TimeSpan.FromSeconds(15));
        wait.Backoff(2).ShouldBe(TimeSpan.FromSeconds(30));
        wait.Backoff(3).ShouldBe(TimeSpan.FromSeconds(60));
        wait.Backoff(6).ShouldBe(StorageWait.MaxBackoff);
        wait.Backoff(1000).ShouldBe(StorageWait.MaxBackoff);
    }
}
