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
/// Runs an <see cref="ExtractFeatures"/> job. Problems of the request itself (unknown model or layer, unreadable
/// weights, missing dataset) are recorded as a failed shard with the reason, not retried; anything else (a crash,
/// shutdown) leaves the message to be redelivered.
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
        catch (Exception e) when (IsBadRequest(e))
        {
            logger.LogError("Shard {Shard} of {FeatureSet} cannot be extracted: {Reason}", job.ShardIndex, job.FeatureSetKey, e.Message);
            await extractor.RecordFailureAsync(job, e.Message);
            await context.Publish(new FeatureShardFailed
            {
                FeatureSetKey = job.FeatureSetKey,
                ShardIndex = job.ShardIndex,
                WorkerId = identity.WorkerId,
                Reason = e.Message,
            });
        }
    }

    private static bool IsBadRequest(Exception e) =>
        e is UnknownNameException or WeightsFileException or WeightsMismatchException or DatasetInputException
            or StoragePathException or ArgumentException or FileNotFoundException or Onnx.OnnxImportException;
}
