using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Extraction;
using Shouldly;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Extraction;

/// <summary>
/// A worker's feature sets in memory: a set read once serves every later job of its prefix; least recently used
/// sets go first over the budget, never one a job holds; a failed read is not remembered; concurrent jobs read once.
/// </summary>
public sealed class ResidentFeatureSetsTests
{
    static ResidentFeatureSetsTests() => TorchRuntime.Initialize();

    /// <summary>A set of <paramref name="rows"/> float32 rows of 256 values: 1 KiB a row.</summary>
    private static CachedFeatures Set(string key, int rows, float value = 1) =>
        new(key, full([rows, 256], value, ScalarType.Float32), [.. Enumerable.Range(0, rows).Select(r => (long)r)], [256], FeatureStorageDtype.Fp32);

    private sealed class Storage
    {
        public List<string> Reads { get; } = [];

        public List<CachedFeatures> Loaded { get; } = [];

        public int Rows { get; init; } = 64;

        public Task<CachedFeatures> Load(string key, CancellationToken ct)
        {
            lock (Reads)
            {
                Reads.Add(key);
            }
            CachedFeatures set = Set(key, Rows);
            lock (Loaded)
            {
                Loaded.Add(set);
            }
            return Task.FromResult(set);
        }
    }

    [Fact]
    public async Task A_set_read_once_serves_the_next_jobs_of_its_prefix_from_memory()
    {
        var storage = new Storage();
        using var resident = new ResidentFeatureSets(1 << 20, storage.Load);

        CachedFeatures first;
        using (ResidentFeatureSets.FeatureLease lease = await resident.AcquireAsync("layer3", CancellationToken.None))
        {
            first = lease.Features;
        }
        using (ResidentFeatureSets.FeatureLease again = await resident.AcquireAsync("layer3", CancellationToken.None))
        {
            again.Features.ShouldBeSameAs(first);
            again.Features.Features.sum().item<float>().ShouldBe(64 * 256);
        }

        storage.Reads.ShouldBe(["layer3"]);
        (resident.Loads, resident.Hits).ShouldBe((1, 1));
        resident.Keys.ShouldBe(["layer3"]);
        resident.Bytes.ShouldBe(64 * 256 * 4 + 64 * 8);
    }

    [Fact]
    public async Task Over_the_budget_the_least_recently_used_set_goes_first_and_a_held_one_never()
    {
        var storage = new Storage();
        // Room for two 64-row sets (65 KiB each with their row ids), not three.
        using var resident = new ResidentFeatureSets(140_000, storage.Load);
        (await resident.AcquireAsync("a", CancellationToken.None)).Dispose();
        ResidentFeatureSets.FeatureLease heldB = await resident.AcquireAsync("b", CancellationToken.None);
        (await resident.AcquireAsync("a", CancellationToken.None)).Dispose(); // a is now more recent than b

        using (await resident.AcquireAsync("c", CancellationToken.None))
        {
            // Over budget: b is the least recent but a job holds it, so a goes.
            resident.Keys.ShouldBe(["c", "b"], ignoreOrder: true);
            storage.Loaded[0].Features.IsInvalid.ShouldBeTrue("an evicted set's memory is freed");
            heldB.Features.Features.sum().item<float>().ShouldBe(64 * 256, "a held set stays valid");
        }
        heldB.Dispose();
        resident.Keys.ShouldBe(["c", "b"], ignoreOrder: true, "both fit once a is gone");

        (await resident.AcquireAsync("a", CancellationToken.None)).Dispose();
        resident.Keys.ShouldBe(["a", "c"], "b was the least recently used");
        storage.Reads.ShouldBe(["a", "b", "c", "a"]);
    }

    [Fact]
    public async Task With_no_budget_a_set_lives_only_while_a_job_holds_it()
    {
        var storage = new Storage();
        using var resident = new ResidentFeatureSets(0, storage.Load);
        ResidentFeatureSets.FeatureLease lease = await resident.AcquireAsync("a", CancellationToken.None);
        using (ResidentFeatureSets.FeatureLease second = await resident.AcquireAsync("a", CancellationToken.None))
        {
            second.Features.ShouldBeSameAs(lease.Features, "two jobs holding it at once share it");
        }
        lease.Dispose();
        lease.Dispose();

        resident.Keys.ShouldBeEmpty();
        lease.Features.Features.IsInvalid.ShouldBeTrue();
        storage.Reads.ShouldBe(["a"]);
    }

    [Fact]
    public async Task A_failed_read_is_not_kept_and_the_next_job_reads_again()
    {
        int attempts = 0;
        using var resident = new ResidentFeatureSets(1 << 20, (key, ct) =>
            ++attempts == 1 ? Task.FromException<CachedFeatures>(new InvalidDataException("shard 0: sha256 mismatch")) : Task.FromResult(Set(key, 4)));

        await Should.ThrowAsync<InvalidDataException>(() => resident.AcquireAsync("a", CancellationToken.None));
        using ResidentFeatureSets.FeatureLease lease = await resident.AcquireAsync("a", CancellationToken.None);

        lease.Features.Count.ShouldBe(4);
        attempts.ShouldBe(2);
    }

    [Fact]
    public async Task Jobs_asking_for_the_same_set_at_once_read_it_once()
    {
        var release = new TaskCompletionSource();
        int reads = 0;
        using var resident = new ResidentFeatureSets(1 << 20, async (key, ct) =>
        {
            Interlocked.Increment(ref reads);
            await release.Task;
            return Set(key, 8);
        });

        Task<ResidentFeatureSets.FeatureLease>[] jobs = [.. Enumerable.Range(0, 4).Select(_ => Task.Run(() => resident.AcquireAsync("a", CancellationToken.None)))];
        await Task.Delay(50); // let them all ask; correctness does not depend on it (a late one finds the set resident)
        release.SetResult();
        ResidentFeatureSets.FeatureLease[] leases = await Task.WhenAll(jobs);

        reads.ShouldBe(1);
        leases.Select(l => l.Features).Distinct().ShouldHaveSingleItem();
        foreach (ResidentFeatureSets.FeatureLease lease in leases)
        {
            lease.Dispose();
        }
    }
    [Fact]
    public async Task A_job_woken_as_the_read_finishes_takes_the_resident_set_rather_than_reading_again()
    {
        // The window: the read's own continuation and its waiters' run in any order once it completes; a waiter that
        // ran after the set stopped loading but before it became resident used to read it a second time (seen in CI).
        for (int round = 0; round < 5000; round++)
        {
            var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            int reads = 0;
            using var resident = new ResidentFeatureSets(1 << 20, async (key, ct) =>
            {
                Interlocked.Increment(ref reads);
                await release.Task;
                return Set(key, 2);
            });

            Task<ResidentFeatureSets.FeatureLease>[] jobs = [.. Enumerable.Range(0, 4).Select(_ => Task.Run(() => resident.AcquireAsync("a", CancellationToken.None)))];
            release.SetResult();
            ResidentFeatureSets.FeatureLease[] leases = await Task.WhenAll(jobs);

            reads.ShouldBe(1, $"round {round}");
            foreach (ResidentFeatureSets.FeatureLease lease in leases)
            {
                lease.Dispose();
            }
        }
    }
}
