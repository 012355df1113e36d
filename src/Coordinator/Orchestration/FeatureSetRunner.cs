using Cluster.Contracts;
using Cluster.Coordinator.Cli;
using Cluster.Coordinator.Planning;
using Cluster.Hosting;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Files;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Spectre.Console;

namespace Cluster.Coordinator.Orchestration;

/// <summary>
/// The CLI's side of a feature set it needs: the cache answers when the set is complete; otherwise it asks the
/// coordinator service (<see cref="FeatureSetService"/>), which plans the set and sends its missing shards, and follows
/// the set in the database until the service marks it complete, or its shards fail. The CLI writes nothing: a closed
/// terminal leaves the extraction running in the service.
/// </summary>
public static class FeatureSetRunner
{
    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(200);

    /// <summary>How long a requested set may take to appear in the database before the service is presumed absent.</summary>
    private static readonly TimeSpan ServiceAnswer = TimeSpan.FromSeconds(60);

    /// <summary>Asks the service for the set unless the cache has it complete; true when asked (the set is to be followed).</summary>
    public static async Task<bool> RequestAsync(IHost host, CliContext cli, ExtractionRequest request, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(host);
        ArgumentNullException.ThrowIfNull(cli);
        ArgumentNullException.ThrowIfNull(request);
        if ((await SetAsync(cli, request.Key.Value, ct))?.Status == FeatureSetStatus.Complete)
        {
            return false;
        }
        ISendEndpoint coordinator = await host.Services.GetRequiredService<ISendEndpointProvider>().GetSendEndpoint(new Uri($"queue:{QueueNames.Coordinator}"));
        await coordinator.Send(request.ToMessage(), ct);
        return true;
    }

    /// <summary>
    /// Asks the service, in one message, for every set the cache does not have complete, so that sets one pass over the
    /// images computes are extracted together (<see cref="Cluster.Contracts.Features.EnsureFeatureSets"/>); the keys asked
    /// (those to follow).
    /// </summary>
    /// <param name="storage">The sweep's materialization plan under its storage budget: the service evicts what it says
    /// before extracting (null: no budget).</param>
    public static async Task<IReadOnlySet<string>> RequestAllAsync(IHost host, CliContext cli, IReadOnlyCollection<ExtractionRequest> requests, CancellationToken ct,
        MaterializationPlan? storage = null)
    {
        ArgumentNullException.ThrowIfNull(host);
        ArgumentNullException.ThrowIfNull(requests);
        var missing = new List<ExtractionRequest>();
        foreach (ExtractionRequest request in requests)
        {
            if ((await SetAsync(cli, request.Key.Value, ct))?.Status != FeatureSetStatus.Complete)
            {
                missing.Add(request);
            }
        }
        // Sent even when every set is cached: the service records their use, which eviction orders by.
        if (requests.Count > 0)
        {
            ISendEndpoint coordinator = await host.Services.GetRequiredService<ISendEndpointProvider>().GetSendEndpoint(new Uri($"queue:{QueueNames.Coordinator}"));
            var wanted = missing.Select(r => r.Key.Value).ToHashSet(StringComparer.Ordinal);
            await coordinator.Send(new Cluster.Contracts.Features.EnsureFeatureSets
            {
                Sets = [.. missing.Select(r => r.ToMessage())],
                Uses = [.. requests.Select(r => r.Key.Value).Where(k => !wanted.Contains(k)).Distinct(StringComparer.Ordinal)],
                StorageBudgetBytes = storage?.BudgetBytes,
                NewBytes = storage?.NewBytes ?? 0,
            }, ct);
        }
        return missing.Select(r => r.Key.Value).ToHashSet(StringComparer.Ordinal);
    }

    /// <summary>The feature set's key, once complete.</summary>
    /// <param name="timeout">Give up following after this long (zero: never); the extraction goes on in the service.</param>
    /// <param name="requested">Already asked of the service (<see cref="RequestAsync"/>): only follow it, so its shards are not sent twice.</param>
    public static async Task<string> EnsureAsync(IHost host, CliContext cli, FileStore store, ExtractionRequest request, bool showProgress, CancellationToken ct,
        TimeSpan timeout = default, bool requested = false)
    {
        ArgumentNullException.ThrowIfNull(request);
        string key = request.Key.Value;
        if (!requested && !await RequestAsync(host, cli, request, ct))
        {
            return key;
        }
        var clock = System.Diagnostics.Stopwatch.StartNew();
        FeatureSetRecord set;
        while (true)
        {
            if (await SetAsync(cli, key, ct) is FeatureSetRecord recorded)
            {
                set = recorded;
                break;
            }
            if (clock.Elapsed > ServiceAnswer)
            {
                throw new ClusterConfigurationException($"feature set {key} was not planned within {ServiceAnswer.TotalSeconds:F0} s of asking: is the coordinator service (`coordinator serve`) running?");
            }
            await Task.Delay(PollInterval, ct);
        }

        var planner = new FeatureSetPlanner(cli.Database, store);
        FeatureSetProgress progress = await planner.ProgressAsync(key, ct);
        bool Done() => set.Status == FeatureSetStatus.Complete || progress.ShardsComplete + progress.ShardsFailed >= set.ShardCount && progress.ShardsFailed > 0;
        bool TimedOut() => timeout > TimeSpan.Zero && clock.Elapsed > timeout;
        async Task Follow(Action<FeatureSetProgress>? report)
        {
            while (!Done() && !TimedOut())
            {
                report?.Invoke(progress);
                await Task.Delay(PollInterval, ct);
                progress = await planner.ProgressAsync(key, ct);
                set = (await SetAsync(cli, key, ct))!;
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
        if (set.Status != FeatureSetStatus.Complete && progress.ShardsFailed > 0)
        {
            throw new FeatureSetFailedException(key, progress);
        }
        if (set.Status != FeatureSetStatus.Complete)
        {
            throw new TimeoutException($"feature set {key}: {progress.ShardsComplete} of {set.ShardCount} shards after {timeout.TotalSeconds:F0} s; the service goes on with it");
        }
        return key;
    }

    /// <summary>The set's row as the service last wrote it, or null before the service has planned it.</summary>
    public static async Task<FeatureSetRecord?> SetAsync(CliContext cli, string key, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(cli);
        await using ClusterDbContext db = cli.Database.CreateDbContext();
        return await db.FeatureSets.AsNoTracking().SingleOrDefaultAsync(s => s.Key == key, ct);
    }
}

/// <summary>Shards of a feature set failed (bad images never fail a shard: these are failures of the job); the message names the first.</summary>
public sealed class FeatureSetFailedException(string key, FeatureSetProgress progress)
    : InvalidOperationException($"{progress.ShardsFailed} shard(s) of feature set {key} failed; shard {progress.Failures[0].Shard}: {progress.Failures[0].Reason}")
{
    public FeatureSetProgress Progress { get; } = progress;
}
