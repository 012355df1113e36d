using System.Text.Json;
using Cluster.Contracts.Training;
using Cluster.Coordinator.Planning;
using Cluster.Coordinator.Specs;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Shouldly;

namespace Cluster.Coordinator.Tests.Planning;

/// <summary>
/// The materialization choice under a storage budget on given candidates: what is stored (and at which dtype), what is
/// recomputed, in which order the budget is spent, what is evicted, and that a set a running sweep needs never is.
/// </summary>
public sealed class MaterializationPlannerTests : IDisposable
{
    private const long KiB = 1024;
    private readonly string _folder = Directory.CreateTempSubdirectory("materialization-tests-").FullName;

    public void Dispose()
    {
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
        Directory.Delete(_folder, recursive: true);
    }

    /// <summary>A candidate of <paramref name="kib"/> KiB in fp32 over 100 images, that its trials would run through <paramref name="passes"/> times.</summary>
    private static PrefixCandidate Prefix(string key, long kib, int passes, bool mustStore = false, string layer = "layer3") =>
        new(key, "resnet18", layer, "none", "train", Rows: 100, ValuesPerRow: kib * KiB / 100 / 4, "fp32", mustStore, RecomputeImages: 100L * passes, Trials: passes,
            new Dictionary<string, string> { ["fp32"] = key, ["bf16"] = key + ".bf16", ["fp16"] = key + ".fp16" });

    private static BudgetSpec Budget(long? kib, string activations = "fp32") => new(kib * KiB, null, 12) { Activations = activations };

    private static StoredSet Stored(string key, long kib, DateTime? lastUsed = null) => new(key, kib * KiB, true, 100, lastUsed);

    [Fact]
    public void Without_a_budget_every_prefix_is_stored_even_one_its_trials_run_once()
    {
        MaterializationPlan plan = MaterializationPlanner.Decide([Prefix("a", 400, passes: 6), Prefix("b", 400, passes: 1)], Budget(null), "spec.yaml line 12", StorageFacts.Empty);

        plan.Decisions.ShouldAllBe(d => d.Action == PrefixAction.Store && d.Dtype == "fp32");
        plan.NewBytes.ShouldBe(800 * KiB);
        plan.Evictions.ShouldBeEmpty();
    }

    [Fact]
    public void Under_a_budget_the_best_saving_per_byte_is_stored_first_and_what_does_not_fit_is_recomputed()
    {
        // "late": small activations, many passes; "early": four times the bytes for the same saving; "once": run once.
        PrefixCandidate late = Prefix("late", 100, passes: 6), early = Prefix("early", 400, passes: 6), once = Prefix("once", 10, passes: 1);

        MaterializationPlan plan = MaterializationPlanner.Decide([early, once, late], Budget(300), "spec.yaml line 12", StorageFacts.Empty);

        plan.For("late").Action.ShouldBe(PrefixAction.Store);
        plan.For("early").Action.ShouldBe(PrefixAction.Recompute);
        plan.For("early").Reason.ShouldContain("does not fit the budget (200 KiB left)");
        plan.For("once").Action.ShouldBe(PrefixAction.Recompute, "storing what is run once saves nothing");
        plan.NewBytes.ShouldBe(100 * KiB);
        plan.For("early").Images.ShouldBe(600, "recomputed: six passes over its 100 images");
        plan.For("late").Images.ShouldBe(100, "stored: one pass");
    }

    [Fact]
    public void With_activations_auto_a_prefix_that_fits_only_in_bf16_is_stored_in_bf16_and_the_layout_gets_its_key()
    {
        MaterializationPlan plan = MaterializationPlanner.Decide([Prefix("late", 100, passes: 6), Prefix("early", 400, passes: 6)], Budget(320, "auto"),
            "spec.yaml line 12", StorageFacts.Empty);

        plan.For("late").Dtype.ShouldBe("fp32");
        PrefixDecision early = plan.For("early");
        early.Action.ShouldBe(PrefixAction.Store);
        early.Dtype.ShouldBe("bf16");
        early.Bytes.ShouldBe(200 * KiB);
        early.Reason.ShouldContain("only in bf16");

        // Without auto the same budget recomputes it.
        MaterializationPlanner.Decide([Prefix("late", 100, passes: 6), Prefix("early", 400, passes: 6)], Budget(320), "spec.yaml line 12", StorageFacts.Empty)
            .For("early").Action.ShouldBe(PrefixAction.Recompute);
    }

    [Fact]
    public void A_budget_too_small_for_the_sets_a_feature_extractor_must_store_is_one_line_with_the_budgets_line()
    {
        var error = Should.Throw<SpecException>(() =>
            MaterializationPlanner.Decide([Prefix("pooled", 400, passes: 0, mustStore: true)], Budget(100), "spec.yaml line 12", StorageFacts.Empty));

        error.Message.ShouldStartWith("spec.yaml line 12: budget.storage 100 KiB cannot hold the feature sets this sweep needs stored (400 KiB");
    }

    [Fact]
    public void Sets_already_stored_are_used_and_take_their_room_and_only_sets_no_sweep_needs_are_evicted_least_recently_used_first()
    {
        DateTime now = new(2026, 12, 3, 12, 0, 0, DateTimeKind.Utc);
        var storage = new StorageFacts(
            [Stored("mine", 100), Stored("pinned", 100), Stored("old", 100, now.AddDays(-3)), Stored("older", 100, now.AddDays(-5)), Stored("recent", 100, now.AddDays(-1))],
            new HashSet<string>(StringComparer.Ordinal) { "pinned" });

        // Budget 600: "mine" and "pinned" take 200, so "new" (300) fits the room; 500 stored + 300 = 800: evict 200.
        MaterializationPlan plan = MaterializationPlanner.Decide([Prefix("mine", 100, passes: 6), Prefix("new", 300, passes: 6)], Budget(600), "spec.yaml line 12", storage);

        plan.For("mine").Action.ShouldBe(PrefixAction.Cached);
        plan.For("new").Action.ShouldBe(PrefixAction.Store);
        plan.UsedBytes.ShouldBe(500 * KiB);
        plan.Evictions.Select(e => e.Key).ShouldBe(["older", "old"]);
    }

    [Fact]
    public void Applying_the_decisions_drops_recomputed_prefixes_from_their_trials_and_renames_a_bf16_set()
    {
        var dataset = new Cluster.Storage.Datasets.DatasetManifest([], [], "/data");
        ExtractionRequest Request(string layer) => new(dataset, "resnet18", layer, "none", "resnet-32", "fp32", "random:1", null, 1000, 8, 32);
        ExtractionRequest early = Request("layer2"), late = Request("layer3");
        TrialChoice choice = SweepSpec.Parse("""
            name: t
            dataset: {train: train, validation: 0.2}
            model: resnet18
            weights: random
            strategy: fine-tune-top
            cutoff: layer2
            lr: 0.01
            epochs: 3
            """, "t.yaml", _folder).SingleTrial();
        var need = new FeatureNeed(dataset, "layer2", "none", ForHead: false);
        var layout = new SweepLayout(null!, new TrialDatasets(dataset, null, null),
            [new SweepTrialLayout(0, 0, choice, new TrialWeights("random:1", null, null), [(need, early)]), new SweepTrialLayout(1, 1, choice, new TrialWeights("random:1", null, null), [(need, late)])], []);
        PrefixCandidate Candidate(ExtractionRequest r) => new(r.Key.Value, "resnet18", r.Layer, "none", dataset.Id, 100, 1000, "fp32", false, 600, 1,
            new[] { "fp32", "bf16", "fp16" }.ToDictionary(d => d, d => (r with { StorageDtype = d }).Key.Value));
        var plan = new MaterializationPlan(1, 0, 0,
            [new PrefixDecision(Candidate(early), PrefixAction.Recompute, "fp32", 0, 100, ""), new PrefixDecision(Candidate(late), PrefixAction.Store, "bf16", 1, 100, "")], []);

        SweepLayout applied = plan.Apply(layout);

        applied.Trials[0].Features.ShouldBeEmpty("its prefix is recomputed: it trains from the images");
        ExtractionRequest stored = applied.Trials[1].Features.ShouldHaveSingleItem().Request;
        stored.StorageDtype.ShouldBe("bf16");
        stored.Key.Value.ShouldBe((late with { StorageDtype = "bf16" }).Key.Value);
        stored.Key.Value.ShouldNotBe(late.Key.Value);
    }

    [Fact]
    public async Task The_storage_facts_pin_every_set_an_unfinished_trial_of_a_running_sweep_trains_on_and_nothing_of_a_finished_one()
    {
        var databases = new ClusterDbContextFactory(DatabaseProvider.Sqlite, $"Data Source={Path.Combine(_folder, "facts.db")}");
        await databases.MigrateAsync(CancellationToken.None);
        DateTime now = DateTime.UtcNow, old = now.AddDays(-2);
        await using (ClusterDbContext db = databases.CreateDbContext())
        {
            foreach (string key in new[] { "running-cutoff", "running-head", "finished-trial", "finished-sweep", "unused", "extracting", "asked-just-now" })
            {
                db.FeatureSets.Add(new FeatureSetRecord
                {
                    Key = key, Model = "resnet18", WeightsHash = "random:1", Layer = "layer3", Pooling = "none", Preprocessing = "resnet-32", DatasetId = "train",
                    Dtype = "float32", Shape = "256x2x2", Status = key == "extracting" ? FeatureSetStatus.Extracting : FeatureSetStatus.Complete,
                    ImageCount = 10, ExtractedCount = 10, LastUsedAt = key == "asked-just-now" ? now.AddMinutes(-5) : old,
                });
            }
            Guid running = Guid.NewGuid(), finished = Guid.NewGuid();
            db.Sweeps.Add(new SweepRecord { Id = running, Name = "running", SpecText = "", SpecHash = "", Status = SweepStatus.Running });
            db.Sweeps.Add(new SweepRecord { Id = finished, Name = "finished", SpecText = "", SpecHash = "", Status = SweepStatus.Completed });
            string Plan(string cutoff, string? head = null) => JsonSerializer.Serialize(new PlannedTrial
            {
                TrialId = Guid.NewGuid(), Number = 0, SegmentEpochs = 2, Params = "{}",
                Settings = new TrialSettings { Model = "resnet18", Weights = "random", WeightsHash = "random:1", InputSize = 32, Strategy = "fine-tune-top", Lr = 0.01, Optimizer = "sgd", Epochs = 3, BatchSize = 8 },
                Data = new TrialData
                {
                    TrainDatasetId = "train", ClassNames = ["a", "b"], CutoffFeatures = new Dictionary<string, string> { ["train"] = cutoff },
                    HeadFeatures = head is null ? new Dictionary<string, string>() : new Dictionary<string, string> { ["train"] = head },
                },
            }, new JsonSerializerOptions(JsonSerializerDefaults.Web));
            int number = 0;
            TrialRecord Trial(Guid sweep, TrialStatus status, string plan) => new()
            {
                Id = Guid.NewGuid(), SweepId = sweep, Number = number++, Hyperparameters = "{}", Strategy = "fine-tune-top", Status = status, Plan = plan,
            };
            db.Trials.Add(Trial(running, TrialStatus.Pending, Plan("running-cutoff", "running-head")));
            db.Trials.Add(Trial(running, TrialStatus.Completed, Plan("finished-trial")));
            db.Trials.Add(Trial(finished, TrialStatus.Completed, Plan("finished-sweep")));
            await db.SaveChangesAsync();
        }

        StorageFacts facts;
        await using (ClusterDbContext db = databases.CreateDbContext())
        {
            facts = await StorageBudget.LoadFactsAsync(db, now, CancellationToken.None);
        }

        facts.Pinned.Order(StringComparer.Ordinal).ShouldBe(["asked-just-now", "extracting", "running-cutoff", "running-head"]);
        facts.Sets.ShouldAllBe(s => s.Bytes == 10 * 256 * 2 * 2 * 4);
        // A budget of nothing: everything evictable goes, and nothing pinned does.
        MaterializationPlanner.Evictions(facts, new HashSet<string>(StringComparer.Ordinal), addedBytes: 1, budgetBytes: 0).Select(e => e.Key).Order(StringComparer.Ordinal)
            .ShouldBe(["finished-sweep", "finished-trial", "unused"]);
    }
}
