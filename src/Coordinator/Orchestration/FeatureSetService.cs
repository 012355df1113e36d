using System.Text.Json;
using Cluster.Contracts;
using Cluster.Contracts.Features;
using Cluster.Contracts.Training;
using Cluster.Coordinator.Planning;
using Cluster.Hosting;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Files;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace Cluster.Coordinator.Orchestration;

/// <summary>
/// The coordinator service's side of feature extraction: an <see cref="EnsureFeatureSet"/> is planned here (the cache
/// answers, a partial set resumes with its missing shards, a new one is recorded with the request it came from) and
/// its shard jobs sent; each <see cref="FeatureShardExtracted"/> or <see cref="FeatureShardFailed"/> the workers publish
/// is checked against the set, and the set is completed (its manifest.json written) when every shard is recorded. So a
/// set no longer depends on the terminal that asked for it. Events about a complete set, or duplicates, change nothing.
/// Sets asked for together (<see cref="EnsureFeatureSets"/>, and every set resumed after a restart) that one pass over
/// the images computes get their shards in shared jobs (<see cref="ExtractionPasses"/>).
/// </summary>
public sealed class FeatureSetService(ClusterDbContextFactory databases, ClusterRuntimeSettings settings, ILogger<FeatureSetService> logger) :
    IConsumer<EnsureFeatureSet>, IConsumer<EnsureFeatureSets>, IConsumer<FeatureShardExtracted>, IConsumer<FeatureShardFailed>, IConsumer<RecoverSweeps>
{
    private FileStore Store => new(settings.StorageRoot);

    public async Task Consume(ConsumeContext<EnsureFeatureSet> context)
    {
        ExtractionRequest request = await ExtractionRequest.FromMessageAsync(context.Message, Store, context.CancellationToken);
        await PlanAndSendAsync(context, [request], context.CancellationToken);
        await MarkUsedAsync([request.Key.Value], context.CancellationToken);
    }

    public async Task Consume(ConsumeContext<EnsureFeatureSets> context)
    {
        var requests = new List<ExtractionRequest>();
        foreach (EnsureFeatureSet set in context.Message.Sets)
        {
            requests.Add(await ExtractionRequest.FromMessageAsync(set, Store, context.CancellationToken));
        }
        string[] keys = [.. requests.Select(r => r.Key.Value).Concat(context.Message.Uses).Distinct(StringComparer.Ordinal)];
        if (context.Message.StorageBudgetBytes is long budget)
        {
            await EvictAsync(keys.ToHashSet(StringComparer.Ordinal), context.Message.NewBytes, budget, context.CancellationToken);
        }
        await PlanAndSendAsync(context, requests, context.CancellationToken);
        await MarkUsedAsync(keys, context.CancellationToken);
    }

    /// <summary>
    /// Makes room under a sweep's storage budget: the sets no running sweep needs (nor this request), least recently used
    /// first, until what is stored plus <paramref name="newBytes"/> fits. A set's rows go first, in one transaction, and
    /// its folder after, so no row ever points at a deleted file (a crash in between leaves an orphan folder, which
    /// `storage usage` counts and a later extraction of that key overwrites).
    /// </summary>
    private async Task EvictAsync(IReadOnlySet<string> wanted, long newBytes, long budget, CancellationToken ct)
    {
        await using ClusterDbContext db = databases.CreateDbContext();
        StorageFacts facts = await StorageBudget.LoadFactsAsync(db, DateTime.UtcNow, ct);
        IReadOnlyList<StoredSet> evictions = MaterializationPlanner.Evictions(facts, wanted, newBytes, budget);
        if (evictions.Count == 0)
        {
            return;
        }
        string[] keys = [.. evictions.Select(e => e.Key)];
        // Inside the provider's execution strategy: PostgreSQL's retrying one refuses a transaction begun outside it.
        await db.Database.CreateExecutionStrategy().ExecuteAsync(async token =>
        {
            await using var transaction = await db.Database.BeginTransactionAsync(token);
            await db.FeatureShards.Where(s => keys.Contains(s.FeatureSetKey)).ExecuteDeleteAsync(token);
            await db.FeatureSets.Where(s => keys.Contains(s.Key)).ExecuteDeleteAsync(token);
            await transaction.CommitAsync(token);
        }, ct);
        foreach (string key in keys)
        {
            Store.Delete($"features/{key}");
        }
        logger.LogInformation("Storage budget {Budget}: evicted {Count} feature set(s) no running sweep needs ({Bytes}), least recently used first: {Keys}",
            MaterializationPlanner.Size(budget), keys.Length, MaterializationPlanner.Size(evictions.Sum(e => e.Bytes)), string.Join(", ", keys));
    }

    /// <summary>Records that the sets were asked for now: eviction goes least recently used first.</summary>
    private async Task MarkUsedAsync(IReadOnlyCollection<string> keys, CancellationToken ct)
    {
        DateTime now = DateTime.UtcNow;
        await using ClusterDbContext db = databases.CreateDbContext();
        await db.FeatureSets.Where(s => keys.Contains(s.Key)).ExecuteUpdateAsync(u => u.SetProperty(s => s.LastUsedAt, now), ct);
    }

    public Task Consume(ConsumeContext<FeatureShardExtracted> context) => CompleteIfDoneAsync(context, context.Message.FeatureSetKey, context.CancellationToken);

    /// <summary>A failed shard is final for this request (asking again retries it), so the set cannot complete: the
    /// trials that wait on it are told now, not when the other shards end.</summary>
    public async Task Consume(ConsumeContext<FeatureShardFailed> context)
    {
        FeatureShardFailed m = context.Message;
        logger.LogWarning("Shard {Shard} of feature set {Key} failed on {Worker}: {Reason}", m.ShardIndex, m.FeatureSetKey, m.WorkerId, m.Reason);
        await SettledAsync(context, new FeatureSetSettled { FeatureSetKey = m.FeatureSetKey, Failure = $"shard {m.ShardIndex} of feature set {m.FeatureSetKey} failed: {m.Reason}" }, context.CancellationToken);
    }

    /// <summary>Tells the scheduler (the same queue, so after this event) that trials waiting on the set can go on.</summary>
    private static async Task SettledAsync(ISendEndpointProvider sender, FeatureSetSettled settled, CancellationToken ct)
    {
        ISendEndpoint coordinator = await sender.GetSendEndpoint(new Uri($"queue:{QueueNames.Coordinator}"));
        await coordinator.Send(settled, ct);
    }

    /// <summary>After a restart: every set still extracting that was planned here gets its missing shards sent again.</summary>
    public async Task Consume(ConsumeContext<RecoverSweeps> context)
    {
        int sent = await RecoverAsync(context, context.CancellationToken);
        logger.LogInformation("Coordinator started: {Shards} missing shard(s) of feature sets being extracted sent again", sent);
    }

    private async Task<int> RecoverAsync(ISendEndpointProvider sender, CancellationToken ct)
    {
        List<string> requests;
        await using (ClusterDbContext db = databases.CreateDbContext())
        {
            requests = await db.FeatureSets.AsNoTracking().Where(s => s.Status == FeatureSetStatus.Extracting && s.Request != null).Select(s => s.Request!).ToListAsync(ct);
        }
        var resumed = new List<ExtractionRequest>();
        foreach (string json in requests)
        {
            resumed.Add(await ExtractionRequest.FromMessageAsync(JsonSerializer.Deserialize<EnsureFeatureSet>(json)!, Store, ct));
        }
        return await PlanAndSendAsync(sender, resumed, ct);
    }

    /// <summary>Plans each set, then sends the shards still missing, one job per pass and shard; the number of jobs sent.</summary>
    private async Task<int> PlanAndSendAsync(ISendEndpointProvider sender, IReadOnlyList<ExtractionRequest> requests, CancellationToken ct)
    {
        var planner = new FeatureSetPlanner(databases, Store);
        var pending = new List<(ExtractionRequest Request, IReadOnlyList<ExtractFeatures> Jobs)>();
        foreach (ExtractionRequest request in requests)
        {
            ExtractionPlan plan = await planner.PlanAsync(request, ct);
            if (plan.IsCached)
            {
                continue;
            }
            if (plan.Jobs.Count == 0)
            {
                // Every shard recorded but the set not marked (the service stopped in between): complete it now.
                await CompleteIfDoneAsync(sender, plan.FeatureSet.Key, ct);
                continue;
            }
            pending.Add((request, plan.Jobs));
        }
        if (pending.Count == 0)
        {
            return 0;
        }
        IReadOnlyList<ExtractFeatures> jobs = ExtractionPasses.Merge(pending);
        ISendEndpoint queue = await sender.GetSendEndpoint(ClusterBus.GpuWorkQueue);
        foreach (ExtractFeatures job in jobs)
        {
            await queue.Send(job, ct);
        }
        logger.LogInformation("Feature sets {Keys}: {Shards} shard(s) missing, sent as {Jobs} job(s) in {Passes} pass(es) over the images",
            string.Join(", ", pending.Select(p => p.Request.Key.Value)), pending.Sum(p => p.Jobs.Count), jobs.Count,
            ExtractionPasses.Count(pending.Select(p => p.Request)));
        return jobs.Count;
    }

    private async Task CompleteIfDoneAsync(ISendEndpointProvider sender, string key, CancellationToken ct)
    {
        FeatureSetRecord? set;
        await using (ClusterDbContext db = databases.CreateDbContext())
        {
            set = await db.FeatureSets.AsNoTracking().SingleOrDefaultAsync(s => s.Key == key, ct);
        }
        if (set is null || set.Status == FeatureSetStatus.Complete || set.Request is null)
        {
            // Unknown, already complete (a duplicate event), or planned by a CLI that completes it itself.
            return;
        }
        var planner = new FeatureSetPlanner(databases, Store);
        FeatureSetProgress progress = await planner.ProgressAsync(key, ct);
        if (progress.ShardsComplete < set.ShardCount)
        {
            return;
        }
        ExtractionRequest request = await ExtractionRequest.FromMessageAsync(JsonSerializer.Deserialize<EnsureFeatureSet>(set.Request)!, Store, ct);
        await planner.CompleteAsync(request, key, ct);
        logger.LogInformation("Feature set {Key} complete: {Images} images in {Shards} shards", key, progress.ImagesDone, set.ShardCount);
        await SettledAsync(sender, new FeatureSetSettled { FeatureSetKey = key }, ct);
    }
}
