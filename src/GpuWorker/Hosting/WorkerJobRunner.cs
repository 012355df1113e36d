using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Weights;
using Cluster.Storage.Datasets;
using Cluster.Storage.Files;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace Cluster.GpuWorker.Hosting;

/// <summary>
/// The steps of one kind of worker job, for <see cref="WorkerJobRunner"/>: how to find its result if some delivery
/// already recorded it, how to compute it, how to record it, and what to announce.
/// </summary>
/// <param name="FindRecorded">The recorded result, or null. Called first (unless the delivery cannot be a repeat), and again
/// after a lost insert race.</param>
/// <param name="Compute">The work itself; honours the token (shutdown).</param>
/// <param name="Record">Writes the result; not cancellable (once computed, a result is worth keeping while shutting down). A
/// <see cref="DbUpdateException"/> or <see cref="AlreadyRecordedException"/> from it (or the latter from
/// <paramref name="Compute"/>) is a lost race when <paramref name="FindRecorded"/> then finds a result.</param>
/// <param name="Completed">Announces the result; the flag says whether it was recorded before (by this or another delivery).</param>
/// <param name="Failed">Records and announces a job that cannot be done, with its one-line reason and whether another try
/// might succeed (a failure <see cref="WorkerJobRunner.IsExplained"/> does not explain: an outage, memory, a bug); null:
/// failures propagate to the bus (retry, then the error queue).</param>
public sealed record WorkerJob<TResult>(
    Func<CancellationToken, Task<TResult?>> FindRecorded,
    Func<CancellationToken, Task<TResult>> Compute,
    Func<TResult, Task> Record,
    Func<TResult, bool, Task> Completed,
    Func<string, bool, Task>? Failed = null)
    where TResult : class;

/// <summary>
/// The one skeleton of every worker job (self-test, feature shard, and the training segments to come): the tracker scope
/// heartbeats report, the job id on every log line, "already recorded?" so a redelivered job costs one lookup, compute,
/// record, a lost insert race treated as done, a full or read-only volume waited out (<see cref="StorageWait"/>) and the
/// job run again, and the classification of failures. Only a shutdown leaves the message unacknowledged (redelivered, as
/// after a crash); a failure of the job itself is recorded with its reason.
/// </summary>
public sealed class WorkerJobRunner(JobTracker jobs, StorageWait storage, ILogger<WorkerJobRunner> logger)
{
    /// <param name="mayBeRecorded">False only when no earlier delivery of this job can exist (the sender's first send,
    /// delivered for the first time): the "already recorded?" lookup is skipped. Records are keyed by the job, so a
    /// repeat that slipped through would cost the work again, never a second record.</param>
    public async Task RunAsync<TResult>(string jobId, WorkerJob<TResult> job, CancellationToken ct, bool mayBeRecorded = true)
        where TResult : class
    {
        ArgumentNullException.ThrowIfNull(job);
        using IDisposable _ = jobs.Begin(jobId);
        using IDisposable __ = Serilog.Context.LogContext.PushProperty("JobId", jobId);
        TResult? recorded = mayBeRecorded ? await job.FindRecorded(ct) : null;
        if (recorded is not null)
        {
            logger.LogInformation("Job {JobId} was already recorded; not computed again", jobId);
            await job.Completed(recorded, true);
            return;
        }
        try
        {
            TResult result;
            int volumeFaults = 0;
            while (true)
            {
                try
                {
                    result = await job.Compute(ct);
                    await job.Record(result);
                    break;
                }
                catch (Exception e) when (e is DbUpdateException or AlreadyRecordedException)
                {
                    TResult? winner = await job.FindRecorded(CancellationToken.None);
                    if (winner is null)
                    {
                        throw;
                    }
                    // Another delivery of the same job recorded it first (a lost insert race, or a delivery the broker took back
                    // from this worker and gave to another while this one still computed); its result stands.
                    logger.LogInformation("Job {JobId} was recorded concurrently by another delivery; its result stands", jobId);
                    await job.Completed(winner, true);
                    return;
                }
                catch (Exception e) when (StorageFaults.VolumeFault(e) is IOException fault)
                {
                    // The volume's fault, not the job's: the same job, run again once the volume takes writes.
                    await storage.UntilWritableAsync(jobId, fault, ++volumeFaults, ct);
                    if (await job.FindRecorded(ct) is TResult recordedMeanwhile)
                    {
                        await job.Completed(recordedMeanwhile, true);
                        return;
                    }
                }
            }
            await job.Completed(result, false);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            // Unacknowledged, so the broker delivers it again: to this worker after a restart, or to another one.
            logger.LogWarning("Job {JobId} stopped before it finished: its delivery was cancelled (shutdown, or the connection to the broker was lost)", jobId);
            throw;
        }
        catch (Exception e) when (job.Failed is not null)
        {
            Exception cause = e is AggregateException { InnerExceptions.Count: 1 } a ? a.InnerExceptions[0] : e;
            bool explained = IsExplained(cause);
            if (!explained)
            {
                logger.LogError(cause, "Job {JobId} failed unexpectedly", jobId);
            }
            logger.LogError("Job {JobId} cannot be done: {Reason}", jobId, cause.Message);
            await job.Failed(cause.Message, !explained);
        }
    }

    /// <summary>
    /// Failures whose message says all there is to say (bad input, a missing file, no verified kernel): logged as one line,
    /// without a stack trace. Anything else is logged with its stack as well, since it is a bug or an outage.
    /// </summary>
    public static bool IsExplained(Exception e) =>
        e is UnknownNameException or WeightsFileException or WeightsMismatchException or DatasetInputException
            or StoragePathException or ArgumentException or FileNotFoundException or InvalidDataException or Extraction.DamagedFeatureShardException
            or Onnx.OnnxImportException
            // No verified way to compute a convolution on this machine: its message names the configuration and every verdict.
            or Kernels.KernelCheckException;
}

/// <summary>
/// Thrown by a job's compute or record step when it finds the job already recorded by another delivery: the runner then
/// announces that delivery's result instead of this one's.
/// </summary>
public sealed class AlreadyRecordedException(string message) : Exception(message);
