using Cluster.Contracts.Features;
using Cluster.GpuWorker.Hosting;
using MassTransit;

namespace Cluster.GpuWorker.Extraction;

/// <summary>
/// Runs an <see cref="ExtractFeatures"/> job through the worker's job skeleton (<see cref="WorkerJobRunner"/>): a shard
/// already recorded is announced, not extracted again; a job that fails (unknown model or layer, unreadable weights,
/// missing dataset, or anything unexpected) is recorded as a failed shard with the reason, not retried; a crash or a
/// shutdown leaves the message to be redelivered.
/// </summary>
public sealed class ExtractFeaturesConsumer(FeatureExtractor extractor, WorkerIdentity identity, WorkerJobRunner runner) : IConsumer<ExtractFeatures>
{
    public Task Consume(ConsumeContext<ExtractFeatures> context)
    {
        ExtractFeatures job = context.Message;
        return runner.RunAsync($"extract/{job.FeatureSetKey}/{job.ShardIndex}", new WorkerJob<ShardOutcome>(
            FindRecorded: ct => extractor.FindRecordedAsync(job, ct),
            Compute: ct => extractor.ExtractAsync(job, ct),
            Record: extractor.RecordAsync,
            Completed: async (outcome, _) =>
            {
                // One event per feature set the pass wrote: the coordinator completes each set on its own shards.
                foreach (ExtractionTap tap in job.AllTaps())
                {
                    await context.Publish(new FeatureShardExtracted
                    {
                        FeatureSetKey = tap.FeatureSetKey,
                        ShardIndex = job.ShardIndex,
                        WorkerId = identity.WorkerId,
                        ImageCount = outcome.ImageCount,
                        SkippedCount = outcome.SkippedCount,
                        Seconds = outcome.Seconds,
                    });
                }
            },
            Failed: async (reason, _) =>
            {
                // The requester can run the request again to retry just the failed shards.
                await extractor.RecordFailureAsync(job, reason);
                foreach (ExtractionTap tap in job.AllTaps())
                {
                    await context.Publish(new FeatureShardFailed { FeatureSetKey = tap.FeatureSetKey, ShardIndex = job.ShardIndex, WorkerId = identity.WorkerId, Reason = reason });
                }
            }), context.CancellationToken);
    }
}
