using Cluster.Coordinator.Cli;
using Cluster.Coordinator.Planning;
using Cluster.Hosting;
using Cluster.Storage.Files;
using MassTransit;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Spectre.Console;

namespace Cluster.Coordinator.Orchestration;

/// <summary>
/// Makes sure a feature set exists before trials train on it: the cache answers when it is complete; otherwise the
/// missing shards are sent to the workers and followed until recorded (a partial set resumes). Shards that fail fail the
/// request with their reasons.
/// </summary>
public static class FeatureSetRunner
{
    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(200);

    /// <summary>The feature set's key, once complete.</summary>
    public static async Task<string> EnsureAsync(IHost host, CliContext cli, FileStore store, ExtractionRequest request, bool showProgress, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(host);
        ArgumentNullException.ThrowIfNull(cli);
        ArgumentNullException.ThrowIfNull(request);
        var planner = new FeatureSetPlanner(cli.Database, store);
        ExtractionPlan plan = await planner.PlanAsync(request, ct);
        string key = plan.FeatureSet.Key;
        if (plan.IsCached)
        {
            return key;
        }
        ISendEndpoint queue = await host.Services.GetRequiredService<ISendEndpointProvider>().GetSendEndpoint(ClusterBus.GpuWorkQueue);
        foreach (var job in plan.Jobs)
        {
            await queue.Send(job, ct);
        }
        int shards = plan.FeatureSet.ShardCount;
        FeatureSetProgress progress = await planner.ProgressAsync(key, ct);
        async Task Follow(Action<FeatureSetProgress>? report)
        {
            while (progress.ShardsComplete + progress.ShardsFailed < shards)
            {
                report?.Invoke(progress);
                await Task.Delay(PollInterval, ct);
                progress = await planner.ProgressAsync(key, ct);
            }
        }
        if (showProgress && !Console.IsOutputRedirected)
        {
            await AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .StartAsync(async ctx =>
                {
                    ProgressTask bar = ctx.AddTask(Markup.Escape($"features {request.Layer} ({request.Pooling}) of {request.Dataset.Entries.Count} images"), maxValue: request.Dataset.Entries.Count);
                    await Follow(p => bar.Value = p.ImagesDone + p.ImagesSkipped);
                    bar.Value = bar.MaxValue;
                });
        }
        else
        {
            await Follow(null);
        }
        if (progress.ShardsFailed > 0)
        {
            (int shard, string reason) = progress.Failures[0];
            throw new InvalidOperationException($"{progress.ShardsFailed} shard(s) of feature set {key} failed; shard {shard}: {reason}");
        }
        await planner.CompleteAsync(request, key, ct);
        return key;
    }
}
