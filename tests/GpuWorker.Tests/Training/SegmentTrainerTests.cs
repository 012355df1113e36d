using Cluster.Contracts.Training;
using Cluster.GpuWorker.Hosting;
using Cluster.GpuWorker.Training;
using Cluster.Storage.Checkpoints;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Microsoft.EntityFrameworkCore;
using Shouldly;
using TorchSharp;
using Xunit.Abstractions;

namespace Cluster.GpuWorker.Tests.Training;

/// <summary>
/// Training segments end to end on real decoded images: each strategy learns a separable problem, a trial resumed by a
/// new trainer (as after a killed worker) ends with the metrics of an uninterrupted one, a corrupt checkpoint falls back
/// to the one before it, and a recorded segment is not trained again.
/// </summary>
[Collection(nameof(GlobalTorchRandomCollection))]
public sealed class SegmentTrainerTests(ITestOutputHelper output)
{
    private static TrialSettings Settings(string strategy, int epochs = 4, string? cutoff = null, string augment = "none", string optimizer = "adam", double lr = 3e-3) => new()
    {
        Model = "resnet18",
        Weights = "random",
        WeightsHash = "random:0",
        InputSize = 32,
        Strategy = strategy,
        Cutoff = cutoff,
        Lr = lr,
        Optimizer = optimizer,
        Epochs = epochs,
        BatchSize = 8,
        Augment = augment,
        Seed = 11,
        HeadEpochs = 1,
    };

    private async Task<List<EpochMetricRecord>> MetricsAsync(TrainingFixture fixture, Guid trial)
    {
        await using ClusterDbContext db = fixture.Databases.CreateDbContext();
        return await db.EpochMetrics.AsNoTracking().Where(m => m.TrialId == trial).OrderBy(m => m.Epoch).ThenBy(m => m.Split).ToListAsync();
    }

    private async Task<SegmentOutcome> RunAsync(TrainingFixture fixture, SegmentTrainer trainer, TrainSegment job)
    {
        SegmentOutcome outcome = await trainer.TrainAsync(job, null, CancellationToken.None);
        await trainer.RecordAsync(job, outcome);
        foreach (EpochRow row in outcome.Epochs)
        {
            output.WriteLine($"segment {job.Segment} epoch {row.Epoch} {row.Split}: loss {row.Loss:F4} accuracy {row.Accuracy:F3}");
        }
        return outcome;
    }

    [Theory]
    [InlineData("from-scratch", null, "none")]
    [InlineData("fine-tune-all", null, "flip")]
    [InlineData("fine-tune-top", "layer3", "crop-flip")]
    public async Task Each_network_strategy_learns_a_separable_problem_well_above_chance(string strategy, string? cutoff, string augment)
    {
        // 30 training images a class: enough batches an epoch for the batch norms' running statistics (momentum 0.1) to
        // settle, so that evaluation in eval mode sees what training saw.
        await using TrainingFixture fixture = await TrainingFixture.CreateAsync(perClass: 40);
        var trial = Guid.NewGuid();
        TrialSettings settings = Settings(strategy, cutoff: cutoff, augment: augment);
        SegmentOutcome outcome = await RunAsync(fixture, fixture.NewTrainer(), TrainingFixture.Segment(trial, settings, fixture.Data(), 0, 0, settings.Epochs));

        outcome.LastEpoch.ShouldBe(settings.Epochs - 1);
        outcome.TestAccuracy.ShouldNotBeNull();
        outcome.TestAccuracy.Value.ShouldBeGreaterThanOrEqualTo(0.8, $"{strategy}: two classes, chance is 0.5");
        List<EpochMetricRecord> metrics = await MetricsAsync(fixture, trial);
        metrics.Count(m => m.Split == "train").ShouldBe(settings.Epochs);
        metrics.Count(m => m.Split == "validation").ShouldBe(settings.Epochs);
        metrics.Count(m => m.Split == "test").ShouldBe(1);
        metrics.ShouldAllBe(m => m.ImagesPerSecond > 0 && m.Seconds > 0);
        // The same curves as TensorBoard scalars under the storage root.
        var scalars = Cluster.Storage.TensorBoard.TensorBoardWriter.ReadScalars(fixture.Store, SegmentTrainer.TensorBoardFolder(Guid.Empty, trial));
        scalars.Where(s => s.Tag == "validation/accuracy").Select(s => s.Step).ShouldBe(Enumerable.Range(0, settings.Epochs).Select(e => (long)e));
        scalars.Single(s => s.Tag == "test/accuracy").Value.ShouldBe(outcome.TestAccuracy.Value, 1e-6);
    }

    [Fact]
    public async Task A_trial_resumed_by_a_new_trainer_ends_with_the_metrics_of_an_uninterrupted_one()
    {
        await using TrainingFixture fixture = await TrainingFixture.CreateAsync();
        TrialSettings settings = Settings("fine-tune-top", epochs: 4, cutoff: "layer3", augment: "crop-flip", optimizer: "sgd", lr: 0.01);
        TrialData data = fixture.Data();

        var whole = Guid.NewGuid();
        await RunAsync(fixture, fixture.NewTrainer(), TrainingFixture.Segment(whole, settings, data, 0, 0, 4));

        var resumed = Guid.NewGuid();
        await RunAsync(fixture, fixture.NewTrainer(), TrainingFixture.Segment(resumed, settings, data, 0, 0, 2));
        // A new trainer, as a restarted worker builds, resumes from segment 0's checkpoint: model, optimizer and RNG state.
        await RunAsync(fixture, fixture.NewTrainer(), TrainingFixture.Segment(resumed, settings, data, 1, 2, 4));

        List<EpochMetricRecord> a = await MetricsAsync(fixture, whole);
        List<EpochMetricRecord> b = await MetricsAsync(fixture, resumed);
        b.Count.ShouldBe(a.Count);
        for (int i = 0; i < a.Count; i++)
        {
            (b[i].Epoch, b[i].Split).ShouldBe((a[i].Epoch, a[i].Split));
            b[i].Loss.ShouldBe(a[i].Loss, 1e-9, $"epoch {a[i].Epoch} {a[i].Split}");
            b[i].Accuracy.ShouldBe(a[i].Accuracy);
        }
    }

    /// <summary>
    /// A segment bounded in time ends at an epoch boundary (limit 0: after one epoch), is not scored on the test set
    /// while epochs remain, and the trial continued as the coordinator continues it (from the last recorded epoch)
    /// ends with the metrics of an unbounded run.
    /// </summary>
    [Fact]
    public async Task A_segment_past_its_time_limit_ends_at_an_epoch_boundary_and_the_trial_continues_to_the_same_metrics()
    {
        await using TrainingFixture fixture = await TrainingFixture.CreateAsync();
        TrialSettings settings = Settings("from-scratch", epochs: 3, lr: 1e-3);
        TrialData data = fixture.Data();

        var whole = Guid.NewGuid();
        await RunAsync(fixture, fixture.NewTrainer(), TrainingFixture.Segment(whole, settings, data, 0, 0, 3));

        var bounded = Guid.NewGuid();
        var outcomes = new List<SegmentOutcome>();
        int from = 0;
        for (int segment = 0; from < settings.Epochs; segment++)
        {
            SegmentOutcome outcome = await RunAsync(fixture, fixture.NewTrainer(timeLimit: SegmentTimeLimit.FromSeconds(0)),
                TrainingFixture.Segment(bounded, settings, data, segment, from, settings.Epochs));
            outcomes.Add(outcome);
            from = outcome.LastEpoch + 1;
        }
        outcomes.Select(o => o.LastEpoch).ShouldBe([0, 1, 2]);
        outcomes.Select(o => o.TestAccuracy is not null).ShouldBe([false, false, true]);

        List<EpochMetricRecord> a = await MetricsAsync(fixture, whole);
        List<EpochMetricRecord> b = await MetricsAsync(fixture, bounded);
        b.Select(m => (m.Epoch, m.Split)).ShouldBe(a.Select(m => (m.Epoch, m.Split)));
        for (int i = 0; i < a.Count; i++)
        {
            b[i].Loss.ShouldBe(a[i].Loss, 1e-9, $"epoch {a[i].Epoch} {a[i].Split}");
        }
        // Without a bound, and with one that a tiny epoch never reaches, the segment trains all its epochs.
        SegmentTimeLimit.None.AllowsAnotherEpoch(TimeSpan.FromDays(1), TimeSpan.FromDays(1), 5).ShouldBeTrue();
        SegmentTimeLimit.FromSeconds(60).AllowsAnotherEpoch(TimeSpan.FromSeconds(50), TimeSpan.FromSeconds(11), 3).ShouldBeFalse();
        SegmentTimeLimit.FromSeconds(60).AllowsAnotherEpoch(TimeSpan.FromSeconds(50), TimeSpan.FromSeconds(9), 3).ShouldBeTrue();
        SegmentTimeLimit.FromSeconds(0).AllowsAnotherEpoch(TimeSpan.FromSeconds(50), TimeSpan.FromSeconds(9), 0).ShouldBeTrue();
    }

    [Fact]
    public async Task A_corrupt_checkpoint_is_detected_and_the_one_before_it_used()
    {
        await using TrainingFixture fixture = await TrainingFixture.CreateAsync();
        TrialSettings settings = Settings("from-scratch", epochs: 3, optimizer: "sgd", lr: 0.01);
        TrialData data = fixture.Data(test: false);
        var whole = Guid.NewGuid();
        await RunAsync(fixture, fixture.NewTrainer(), TrainingFixture.Segment(whole, settings, data, 0, 0, 3));

        var trial = Guid.NewGuid();
        SegmentTrainer trainer = fixture.NewTrainer();
        await RunAsync(fixture, trainer, TrainingFixture.Segment(trial, settings, data, 0, 0, 1));
        await RunAsync(fixture, trainer, TrainingFixture.Segment(trial, settings, data, 1, 1, 2));
        // Segment 1's checkpoint is torn (a crash mid-write on a filesystem that lost the rename's data).
        string tensors = fixture.Store.Resolve(CheckpointStore.TensorsPath(Guid.Empty.ToString(), trial.ToString(), 1));
        byte[] bytes = File.ReadAllBytes(tensors);
        File.WriteAllBytes(tensors, bytes[..(bytes.Length / 2)]);

        SegmentOutcome last = await RunAsync(fixture, fixture.NewTrainer(), TrainingFixture.Segment(trial, settings, data, 2, 2, 3));

        // Segment 2 went back to segment 0's checkpoint and trained epochs 1 and 2 again: the same metrics as straight through.
        last.Epochs.Where(r => r.Split == "train").Select(r => r.Epoch).ShouldBe([1, 2]);
        List<EpochMetricRecord> a = await MetricsAsync(fixture, whole);
        List<EpochMetricRecord> b = await MetricsAsync(fixture, trial);
        b.Select(m => (m.Epoch, m.Split, Math.Round(m.Loss, 9))).ShouldBe(a.Select(m => (m.Epoch, m.Split, Math.Round(m.Loss, 9))));
    }

    [Fact]
    public async Task Fine_tune_top_trains_the_head_alone_first_then_the_top_and_never_the_frozen_prefix()
    {
        await using TrainingFixture fixture = await TrainingFixture.CreateAsync(perClass: 8);
        // The starting weights from a file, not from torch's global generator, which tests running in parallel share.
        using var initial = GpuWorker.Models.ModelCatalog.Find("resnet18").Build();
        Directory.CreateDirectory(fixture.Store.Resolve("weights"));
        GpuWorker.Weights.StateDictFile.SaveSafetensors(fixture.Store.Resolve("weights/start.safetensors"), initial, new Dictionary<string, string>());
        var start = initial.state_dict().ToDictionary(p => p.Key, p => p.Value);
        TrialSettings settings = Settings("fine-tune-top", epochs: 2, cutoff: "layer3", augment: "flip", optimizer: "sgd", lr: 0.01)
            with { Weights = "weights/start.safetensors", WeightsHash = "sha256:start" };
        TrialData data = fixture.Data(test: false);
        var trial = Guid.NewGuid();
        SegmentTrainer trainer = fixture.NewTrainer();
        await RunAsync(fixture, trainer, TrainingFixture.Segment(trial, settings, data, 0, 0, 1));
        await RunAsync(fixture, trainer, TrainingFixture.Segment(trial, settings, data, 1, 1, 2));
        var store = new CheckpointStore(fixture.Store);
        (LoadedCheckpoint? afterHead, _) = await store.TryLoadAsync(Guid.Empty.ToString(), trial.ToString(), 0, CancellationToken.None);
        (LoadedCheckpoint? afterTop, _) = await store.TryLoadAsync(Guid.Empty.ToString(), trial.ToString(), 1, CancellationToken.None);
        bool Same(LoadedCheckpoint checkpoint, string key)
        {
            using var saved = SegmentTrainer.FromCheckpoint(checkpoint.Tensor($"model/{key}"));
            return saved.shape.SequenceEqual(start[key].shape) && saved.eq(start[key]).all().item<bool>();
        }
        afterHead!.Info.State["stage"].ShouldBe("head");
        afterTop!.Info.State["stage"].ShouldBe("top");
        // Frozen up to layer3, bit for bit (weights and batch-norm statistics), through both stages.
        foreach (string key in start.Keys.Where(k => !k.StartsWith("layer4", StringComparison.Ordinal) && !k.StartsWith("fc", StringComparison.Ordinal)))
        {
            Same(afterTop, key).ShouldBeTrue(key);
        }
        // Stage 1 trained the head alone: layer4 untouched; stage 2 unfroze it.
        Same(afterHead, "layer4.1.conv2.weight").ShouldBeTrue();
        Same(afterHead, "layer4.1.bn2.running_mean").ShouldBeTrue();
        Same(afterTop, "layer4.1.conv2.weight").ShouldBeFalse();
    }

    [Fact]
    public async Task A_diverging_trial_fails_with_its_reason_instead_of_recording_non_numbers()
    {
        await using TrainingFixture fixture = await TrainingFixture.CreateAsync(perClass: 8);
        TrialSettings settings = Settings("from-scratch", epochs: 1, optimizer: "sgd", lr: 1e6);
        TrainSegment job = TrainingFixture.Segment(Guid.NewGuid(), settings, fixture.Data(test: false), 0, 0, 1);

        ArgumentException e = await Should.ThrowAsync<ArgumentException>(() => fixture.NewTrainer().TrainAsync(job, null, CancellationToken.None));

        e.Message.ShouldContain("diverged");
        e.Message.ShouldContain("lower lr");
    }

    [Fact]
    public async Task A_segment_already_recorded_is_found_and_not_trained_again()
    {
        await using TrainingFixture fixture = await TrainingFixture.CreateAsync(perClass: 8);
        TrialSettings settings = Settings("from-scratch", epochs: 1);
        TrainSegment job = TrainingFixture.Segment(Guid.NewGuid(), settings, fixture.Data(test: false), 0, 0, 1);
        SegmentTrainer trainer = fixture.NewTrainer();
        (await trainer.FindRecordedAsync(job, CancellationToken.None)).ShouldBeNull();
        SegmentOutcome outcome = await RunAsync(fixture, trainer, job);

        SegmentOutcome? recorded = await fixture.NewTrainer().FindRecordedAsync(job, CancellationToken.None);
        recorded.ShouldNotBeNull();
        recorded.Checkpoint.ShouldBe(outcome.Checkpoint);
        recorded.ValidationAccuracy.ShouldBe(outcome.ValidationAccuracy);
    }

    /// <summary>
    /// A late delivery: the broker took the segment back from a worker that overran its consumer timeout and another
    /// worker completed it; the late worker then finishes too. Its result must not replace the recorded one (the segment
    /// would count as completed twice, by the wrong worker, with the metrics of a run the checkpoint does not describe).
    /// </summary>
    [Fact]
    public async Task A_late_delivery_neither_overwrites_a_completed_segment_nor_its_checkpoint()
    {
        await using TrainingFixture fixture = await TrainingFixture.CreateAsync(perClass: 8);
        TrialSettings settings = Settings("from-scratch", epochs: 1);
        TrainSegment job = TrainingFixture.Segment(Guid.NewGuid(), settings, fixture.Data(test: false), 0, 0, 1);
        SegmentTrainer late = fixture.NewTrainer(workerId: "late-worker");
        SegmentOutcome lateOutcome = await late.TrainAsync(job, null, CancellationToken.None);
        SegmentOutcome winner = await RunAsync(fixture, fixture.NewTrainer(workerId: "winner"), job);
        List<EpochMetricRecord> metricsBefore = await MetricsAsync(fixture, job.TrialId);

        // Recording after the winner: refused, and nothing written.
        AlreadyRecordedException refused = await Should.ThrowAsync<AlreadyRecordedException>(() => late.RecordAsync(job, lateOutcome with { ValidationAccuracy = -1 }));
        refused.Message.ShouldContain("winner");
        // Training after the winner: refused before the checkpoint is written again.
        string sha256 = await fixture.Store.Sha256Async(winner.Checkpoint, CancellationToken.None);
        File.SetLastWriteTimeUtc(fixture.Store.Resolve(winner.Checkpoint), new DateTime(2020, 1, 1, 0, 0, 0, DateTimeKind.Utc));
        await Should.ThrowAsync<AlreadyRecordedException>(() => late.TrainAsync(job, null, CancellationToken.None));

        await using ClusterDbContext db = fixture.Databases.CreateDbContext();
        SegmentRecord segment = await db.Segments.AsNoTracking().SingleAsync(s => s.TrialId == job.TrialId && s.Index == 0);
        segment.WorkerId.ShouldBe("winner");
        segment.Attempts.ShouldBe(1);
        segment.Status.ShouldBe(SegmentStatus.Completed);
        segment.ValidationAccuracy.ShouldBe(winner.ValidationAccuracy);
        (await MetricsAsync(fixture, job.TrialId)).Select(m => (m.Epoch, m.Split, m.Loss, m.Accuracy))
            .ShouldBe(metricsBefore.Select(m => (m.Epoch, m.Split, m.Loss, m.Accuracy)));
        (await fixture.Store.Sha256Async(winner.Checkpoint, CancellationToken.None)).ShouldBe(sha256);
        File.GetLastWriteTimeUtc(fixture.Store.Resolve(winner.Checkpoint)).Year.ShouldBe(2020);
    }
}

/// <summary>
/// Tests that compare two trainings of the same seed run alone: a model's initial weights come from torch's global
/// generator (TorchSharp's modules initialise from it), which any test running in parallel would draw from in between.
/// A worker runs one job at a time, so there the draws are its own.
/// </summary>
[CollectionDefinition(nameof(GlobalTorchRandomCollection), DisableParallelization = true)]
public sealed class GlobalTorchRandomCollection;
