using Cluster.Contracts.Features;
using Cluster.GpuWorker.Hosting;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Weights;
using Cluster.Storage.Datasets;
using Cluster.Storage.Files;
using MassTransit;
using Microsoft.Extensions.Logging;

namespace Cluster.GpuWorker.Extraction;

/// <summary>
/// Runs an <see cref="ExtractFeatures"/> job. A job that fails (unknown model or layer, unreadable weights, missing
/// dataset, or anything unexpected) is recorded as a failed shard with the reason, not retried; a crash or a shutdown
/// leaves the message to be redelivered.
/// </summary>
public sealed class ExtractFeaturesConsumer(FeatureExtractor extractor, WorkerIdentity identity, JobTracker jobs, ILogger<ExtractFeaturesConsumer> logger)
    : IConsumer<ExtractFeatures>
{
    public async Task Consume(ConsumeContext<ExtractFeatures> context)
    {
        ExtractFeatures job = context.Message;
        string jobId = $"extract/{job.FeatureSetKey}/{job.ShardIndex}";
        using IDisposable _ = jobs.Begin(jobId);
        using IDisposable __ = Serilog.Context.LogContext.PushProperty("JobId", jobId);
        try
        {
            ShardOutcome outcome = await extractor.ExtractAsync(job, context.CancellationToken);
            await context.Publish(new FeatureShardExtracted
            {
                FeatureSetKey = job.FeatureSetKey,
                ShardIndex = job.ShardIndex,
                WorkerId = identity.WorkerId,
                ImageCount = outcome.ImageCount,
                SkippedCount = outcome.SkippedCount,
                Seconds = outcome.Seconds,
            });
        }
        catch (Exception e) when (e is not OperationCanceledException || !context.CancellationToken.IsCancellationRequested)
        {
            // Any failure of the job itself is recorded with its reason for the requester (who can run the request
            // again to retry just the failed shards); only shutdown leaves the message unacknowledged, to be
            // redelivered, as a crash of the process does.
            Exception cause = e is AggregateException { InnerExceptions.Count: 1 } a ? a.InnerExceptions[0] : e;
            if (!IsBadRequest(cause))
            {
                logger.LogError(cause, "Shard {Shard} of {FeatureSet} failed unexpectedly", job.ShardIndex, job.FeatureSetKey);
            }
            logger.LogError("Shard {Shard} of {FeatureSet} cannot be extracted: {Reason}", job.ShardIndex, job.FeatureSetKey, cause.Message);
            await extractor.RecordFailureAsync(job, cause.Message);
            await context.Publish(new FeatureShardFailed
            {
                FeatureSetKey = job.FeatureSetKey,
                ShardIndex = job.ShardIndex,
                WorkerId = identity.WorkerId,
                Reason = cause.Message,
            });
        }
    }

    private static bool IsBadRequest(Exception e) =>
        e is UnknownNameException or WeightsFileException or WeightsMismatchException or DatasetInputException
            or StoragePathException or ArgumentException or FileNotFoundException or Onnx.OnnxImportException
            // No verified way to compute a convolution on this machine: its message names the configuration and every verdict.
            or Kernels.KernelCheckException;
}
