using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using Cluster.Contracts.Training;
using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Extraction;
using Cluster.GpuWorker.Hosting;
using Cluster.GpuWorker.Images;
using Cluster.GpuWorker.Kernels;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Training.Heads;
using Cluster.GpuWorker.Weights;
using Cluster.Storage.Checkpoints;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Datasets;
using Cluster.Storage.Files;
using Cluster.Storage.Formats;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Storage;
using Microsoft.Extensions.Logging;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Training;

/// <summary>One epoch's metrics on one split, as recorded in epoch_metrics.</summary>
public sealed record EpochRow(int Epoch, string Split, double Loss, double Accuracy, double ImagesPerSecond, double Seconds, double? LearningRate = null);

/// <summary>What a trained (or already recorded) segment comes to.</summary>
public sealed record SegmentOutcome(
    int LastEpoch,
    double? ValidationAccuracy,
    double? ValidationLoss,
    double? TestAccuracy,
    bool StoppedEarly,
    string Checkpoint,
    string Sha256,
    double Seconds,
    IReadOnlyList<EpochRow> Epochs,
    DateTime? StartedAt = null);

/// <summary>
/// Trains one <see cref="TrainSegment"/>: the trial's model (or head) from its last good checkpoint (or its initial
/// weights), for the segment's epochs, with validation after each epoch, early stopping, the test set after the last
/// one, then a checkpoint (weights, optimizer state, RNG state, epoch, early-stopping state) and the epochs' metric rows.
/// Everything random comes from one generator seeded from the trial's seed and carried through checkpoints, and the
/// learning rate is a pure function of the epoch, so a trial resumed after a crash ends with the metrics of an
/// uninterrupted one. The consumer runs it through <see cref="WorkerJobRunner"/>.
/// </summary>
public sealed class SegmentTrainer(
    ClusterDbContextFactory databases,
    FileStore store,
    DatasetManifestCache manifests,
    KernelVerifier verifier,
    WorkerIdentity identity,
    JobTracker jobs,
    ResidentFeatureSets residentFeatures,
    SegmentTimeLimit timeLimit,
    ILogger<SegmentTrainer> logger)
{
    private readonly CheckpointStore _checkpoints = new(store);

    public static string JobId(TrainSegment job) => job.JobId();

    public async Task<SegmentOutcome?> FindRecordedAsync(TrainSegment job, CancellationToken ct)
    {
        await using ClusterDbContext db = databases.CreateDbContext();
        SegmentRecord? done = await db.Segments.AsNoTracking()
            .SingleOrDefaultAsync(s => s.TrialId == job.TrialId && s.Index == job.Segment && s.Status == SegmentStatus.Completed, ct);
        return done is null ? null : new SegmentOutcome(done.LastEpoch ?? job.EpochTo - 1, done.ValidationAccuracy, null, done.TestAccuracy,
            done.StoppedEarly, done.CheckpointPath ?? "", done.Sha256 ?? "", done.Seconds, [], done.StartedAt);
    }

    public async Task<SegmentOutcome> TrainAsync(TrainSegment job, Action<TrialProgress>? progress, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(job);
        var clock = Stopwatch.StartNew();
        DateTime startedAt = DateTime.UtcNow;
        TrialSettings settings = job.Settings;
        var plan = TrialPlan.From(settings, job.Data.ClassNames.Count);
        if (job.EpochFrom < 0 || job.EpochTo <= job.EpochFrom || job.EpochTo > settings.Epochs)
        {
            throw new ArgumentException($"segment {job.Segment} epochs [{job.EpochFrom}, {job.EpochTo}) are not within the trial's {settings.Epochs}");
        }
        using TrialSplits splits = await LoadSplitsAsync(job, plan, ct);
        string sweep = job.SweepId.ToString();
        string trial = job.TrialId.ToString();
        (LoadedCheckpoint? resume, IReadOnlyList<RejectedCheckpoint> rejected) = await _checkpoints.FindLatestGoodAsync(sweep, trial, ct, before: job.Segment);
        foreach (RejectedCheckpoint bad in rejected)
        {
            logger.LogWarning("Checkpoint of segment {Segment} of trial {Trial} cannot be used: {Reason}", bad.Segment, trial, bad.Reason);
        }
        if (resume is null && job.Segment > 0)
        {
            logger.LogWarning("Trial {Trial} has no good checkpoint before segment {Segment}: it starts again from epoch 0", trial, job.Segment);
        }
        TrainingState state = resume is null ? new TrainingState() : TrainingState.From(resume.Info);
        int firstEpoch = resume is null ? 0 : resume.Info.Epoch + 1;
        if (resume is not null && firstEpoch < job.EpochFrom)
        {
            logger.LogWarning("Trial {Trial} resumes at epoch {Epoch}, before segment {Segment}'s first epoch {From}: a later checkpoint was unusable",
                trial, firstEpoch, job.Segment, job.EpochFrom);
        }

        using var generator = new Generator((ulong)settings.Seed, torch.CPU);
        var rows = new List<EpochRow>();
        double? testAccuracy = null;
        List<CheckpointTensor> tensors;
        if (plan.Strategy == TrainingStrategy.FeatureExtractor)
        {
            // A head trains in one go (its own epochs, for the mlp, inside); the trial is a single segment.
            (tensors, testAccuracy) = await TrainHeadAsync(job, plan, splits, state, rows, ct);
        }
        else
        {
            (tensors, testAccuracy) = await TrainNetworkAsync(job, plan, splits, state, resume, generator, rows, firstEpoch, clock, progress, ct);
        }
        // Set by every epoch trained; unset only when the checkpoint resumed from already ends the segment.
        int lastEpoch = state.LastEpoch ?? job.EpochTo - 1;
        // A delivery the broker took back (this worker overran the consumer timeout or lost its connection) may have been
        // completed elsewhere meanwhile: its checkpoint, at the same path, is the one the recorded metrics describe.
        if (await FindRecordedAsync(job, CancellationToken.None) is not null)
        {
            throw new AlreadyRecordedException($"Segment {job.Segment} of trial {trial} was completed by another delivery while this one trained");
        }
        CheckpointInfo info = await _checkpoints.WriteAsync(new CheckpointInfo
        {
            SweepId = sweep,
            TrialId = trial,
            Segment = job.Segment,
            Epoch = lastEpoch,
            Metric = state.LastValidationAccuracy,
            State = state.ToDictionary(settings, job.Data, plan.Architecture.Name),
        }, tensors, ct);
        EpochRow? validation = rows.LastOrDefault(r => r.Split == "validation");
        return new SegmentOutcome(lastEpoch, validation?.Accuracy, validation?.Loss, testAccuracy, state.StoppedEarly,
            info.TensorsPath, info.Sha256, clock.Elapsed.TotalSeconds, rows, startedAt);
    }

    /// <summary>Writes the segment's row and its epochs' metric rows in one transaction (a redelivery replaces the rows of epochs trained again), unless another delivery
    /// completed the segment first: then <see cref="AlreadyRecordedException"/>, and nothing is written.</summary>
    public async Task RecordAsync(TrainSegment job, SegmentOutcome outcome)
    {
        // A transaction of ours runs inside the provider's execution strategy (PostgreSQL's retries transient failures,
        // and refuses a transaction begun outside it).
        await using ClusterDbContext db = databases.CreateDbContext();
        await db.Database.CreateExecutionStrategy().ExecuteAsync(async () =>
        {
            // A retried attempt starts from what the database holds, not from the entities of the failed one.
            db.ChangeTracker.Clear();
            await using IDbContextTransaction transaction = await db.Database.BeginTransactionAsync();
            SegmentRecord? segment = await db.Segments.SingleOrDefaultAsync(s => s.TrialId == job.TrialId && s.Index == job.Segment);
            if (segment is null)
            {
                segment = new SegmentRecord { TrialId = job.TrialId, Index = job.Segment };
                db.Segments.Add(segment);
            }
            else
            {
                // Claim the row: only one delivery completes a segment. The conditional update locks the row, so of two
                // deliveries recording at once the second sees the first's Completed after it commits, and loses.
                int claimed = await db.Segments
                    .Where(s => s.TrialId == job.TrialId && s.Index == job.Segment && s.Status != SegmentStatus.Completed)
                    .ExecuteUpdateAsync(s => s.SetProperty(r => r.Status, SegmentStatus.Completed));
                if (claimed == 0)
                {
                    throw new AlreadyRecordedException($"Segment {job.Segment} of trial {job.TrialId} is already recorded complete by {segment.WorkerId}");
                }
            }
            int[] epochs = [.. outcome.Epochs.Select(r => r.Epoch).Distinct()];
            List<EpochMetricRecord> old = await db.EpochMetrics.Where(m => m.TrialId == job.TrialId && epochs.Contains(m.Epoch)).ToListAsync();
            db.EpochMetrics.RemoveRange(old);
            db.EpochMetrics.AddRange(outcome.Epochs.Select(r => new EpochMetricRecord
            {
                TrialId = job.TrialId,
                Epoch = r.Epoch,
                Split = r.Split,
                Loss = r.Loss,
                Accuracy = r.Accuracy,
                ImagesPerSecond = r.ImagesPerSecond,
                Seconds = r.Seconds,
                LearningRate = r.LearningRate,
            }));
            segment.EpochFrom = job.EpochFrom;
            segment.EpochTo = job.EpochTo;
            segment.CheckpointPath = outcome.Checkpoint;
            segment.Sha256 = outcome.Sha256;
            segment.WorkerId = identity.WorkerId;
            segment.Status = SegmentStatus.Completed;
            segment.Attempts++;
            segment.LastEpoch = outcome.LastEpoch;
            segment.ValidationAccuracy = outcome.ValidationAccuracy;
            segment.TestAccuracy = outcome.TestAccuracy;
            segment.StoppedEarly = outcome.StoppedEarly;
            segment.Seconds = outcome.Seconds;
            segment.FailureReason = null;
            segment.StartedAt = outcome.StartedAt;
            segment.CompletedAt = DateTime.UtcNow;
            await db.SaveChangesAsync();
            await transaction.CommitAsync();
        });
        WriteLearningCurves(job, outcome);
        if (residentFeatures.Loads > 0)
        {
            logger.LogInformation("Feature sets in memory: {Sets} ({MiB:F0} MiB of {Budget:F0}); {Loads} read from storage and {Hits} reused since the worker started",
                residentFeatures.Keys.Count, residentFeatures.Bytes / 1048576.0, residentFeatures.BudgetBytes / 1048576.0, residentFeatures.Loads, residentFeatures.Hits);
        }
    }

    public static string TensorBoardFolder(Guid sweepId, Guid trialId) => $"tensorboard/{sweepId}/{trialId}";

    /// <summary>
    /// The epochs' metrics as TensorBoard scalars (`tensorboard --logdir STORAGE/tensorboard` shows every trial's curves).
    /// Written after the database rows: the rows are the record, the event files a view of it, so a failure here is logged, not fatal.
    /// </summary>
    private void WriteLearningCurves(TrainSegment job, SegmentOutcome outcome)
    {
        try
        {
            using var writer = new Cluster.Storage.TensorBoard.TensorBoardWriter(store, TensorBoardFolder(job.SweepId, job.TrialId));
            foreach (EpochRow row in outcome.Epochs)
            {
                writer.Scalar($"{row.Split}/loss", row.Epoch, row.Loss);
                writer.Scalar($"{row.Split}/accuracy", row.Epoch, row.Accuracy);
                writer.Scalar($"{row.Split}/images_per_second", row.Epoch, row.ImagesPerSecond);
                if (row.LearningRate is double rate)
                {
                    writer.Scalar("learning_rate", row.Epoch, rate);
                }
            }
        }
        catch (IOException e)
        {
            logger.LogWarning(e, "TensorBoard events of trial {Trial} segment {Segment} not written", job.TrialId, job.Segment);
        }
    }

    public async Task RecordFailureAsync(TrainSegment job, string reason)
    {
        await using ClusterDbContext db = databases.CreateDbContext();
        await JobFailures.RecordSegmentAsync(db, job, identity.WorkerId, reason, CancellationToken.None);
    }

    // ---- the network strategies: fine-tune-top (two stages), fine-tune-all, from-scratch ----

    private async Task<(List<CheckpointTensor> Tensors, double? TestAccuracy)> TrainNetworkAsync(
        TrainSegment job, TrialPlan plan, TrialSplits splits, TrainingState state, LoadedCheckpoint? resume, Generator generator,
        List<EpochRow> rows, int firstEpoch, Stopwatch clock, Action<TrialProgress>? progress, CancellationToken ct)
    {
        TrialSettings settings = job.Settings;
        TimeSpan longestEpoch = TimeSpan.Zero;
        using Backbone model = BuildModel(plan, settings, job.Data.ClassNames.Count);
        if (resume is not null)
        {
            RestoreModel(model, resume);
            using Tensor rng = RestoreTensor(resume, "generator");
            generator.set_state(rng);
        }
        var schedule = new LearningRateSchedule(LearningRateSchedule.Parse(settings.Schedule), settings.Epochs, settings.StepEpochs, settings.StepGamma);
        SuffixTrainer? trainer = null;
        string? trainerStage = null;
        double? testAccuracy = null;
        try
        {
            for (int epoch = firstEpoch; epoch < job.EpochTo && !state.StoppedEarly; epoch++)
            {
                ct.ThrowIfCancellationRequested();
                if (!timeLimit.AllowsAnotherEpoch(clock.Elapsed, longestEpoch, epoch - firstEpoch))
                {
                    logger.LogInformation("Trial {Trial} segment {Segment} ends after epoch {Epoch} of {To}: another epoch (up to {Longest:F0} s) would pass the segment time limit of {Limit:F0} s; the coordinator sends the rest",
                        job.TrialId, job.Segment, epoch - 1, job.EpochTo - 1, longestEpoch.TotalSeconds, timeLimit.Limit!.Value.TotalSeconds);
                    break;
                }
                long epochStarted = Stopwatch.GetTimestamp();
                (string stage, string? frozenTap) = plan.StageOf(epoch);
                if (stage != trainerStage)
                {
                    trainer?.Dispose();
                    trainer = new SuffixTrainer(model, frozenTap, plan.OptimizerSettings(settings), verifier,
                        new KernelPlan(settings.InputSize, [settings.BatchSize], get_num_threads()));
                    // The optimizer's state carries over within a stage, also across segments; a new stage starts its own.
                    if (resume is not null && trainerStage is null && resume.Info.State.GetValueOrDefault("stage") == stage && resume.Tensors.Any(t => t.Name == "optimizer"))
                    {
                        trainer.LoadOptimizerState(resume.Tensor("optimizer").Data.ToArray());
                    }
                    trainerStage = stage;
                }
                trainer!.ScaleLearningRates(schedule.Factor(epoch));
                TrainingRows train = await splits.ForAsync("train", stage, ct);
                EpochMetrics trained = await TrainEpochAsync(trainer, train, settings, plan, generator, epoch, job, stage, progress, ct);
                rows.Add(new EpochRow(epoch, "train", trained.Loss, trained.Accuracy, trained.ImagesPerSecond, trained.Seconds, trainer.LearningRate));
                EpochMetrics validation = await EvaluateAsync(trainer, await splits.ForAsync("validation", stage, ct), settings.BatchSize, job, epoch, "validation", progress, ct);
                rows.Add(new EpochRow(epoch, "validation", validation.Loss, validation.Accuracy, validation.ImagesPerSecond, validation.Seconds));
                state.EpochDone(epoch, stage, validation.Accuracy, settings.Patience);
                TimeSpan epochTook = Stopwatch.GetElapsedTime(epochStarted);
                longestEpoch = epochTook > longestEpoch ? epochTook : longestEpoch;
                logger.LogInformation("Trial {Trial} epoch {Epoch} ({Stage}): train loss {Loss:F4} accuracy {TrainAccuracy:P2}, validation accuracy {Accuracy:P2}, {Rate:F1} images/s",
                    job.TrialId, epoch, stage, trained.Loss, trained.Accuracy, validation.Accuracy, trained.ImagesPerSecond);
            }
            // Scored on the test set only when no epoch is left to train: the trial stopped early, or this is its last
            // segment and it reached its end (not cut short by the time limit).
            int lastEpoch = state.LastEpoch ?? job.EpochTo - 1;
            bool last = (job.IsLast && lastEpoch >= job.EpochTo - 1) || state.StoppedEarly;
            if (last && splits.HasTest && trainer is not null)
            {
                (string stage, string? frozenTap) = plan.StageOf(lastEpoch);
                EpochMetrics test = await EvaluateAsync(trainer, await splits.ForAsync("test", stage, ct), settings.BatchSize, job, state.LastEpoch ?? 0, "test", progress, ct);
                rows.Add(new EpochRow(state.LastEpoch ?? 0, "test", test.Loss, test.Accuracy, test.ImagesPerSecond, test.Seconds));
                testAccuracy = test.Accuracy;
            }
            var tensors = new List<CheckpointTensor>();
            foreach ((string name, Tensor value) in model.state_dict())
            {
                tensors.Add(ToCheckpoint($"model/{name}", value));
            }
            if (trainer is not null)
            {
                tensors.Add(BytesTensor("optimizer", trainer.SaveOptimizerState()));
                state.Stage = trainerStage;
            }
            using (Tensor rng = generator.get_state())
            {
                tensors.Add(ToCheckpoint("generator", rng));
            }
            return (tensors, testAccuracy);
        }
        finally
        {
            trainer?.Dispose();
        }
    }

    private async Task<EpochMetrics> TrainEpochAsync(
        SuffixTrainer trainer, TrainingRows train, TrialSettings settings, TrialPlan plan, Generator generator, int epoch,
        TrainSegment job, string stage, Action<TrialProgress>? progress, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        int[] order;
        using (Tensor permutation = randperm(train.Count, generator: generator))
        {
            order = [.. permutation.data<long>().ToArray().Select(p => (int)p)];
        }
        int batches = (train.Count + settings.BatchSize - 1) / settings.BatchSize;
        double lossSum = 0;
        long correct = 0;
        int seen = 0;
        int batchIndex = 0;
        var lastReport = Stopwatch.StartNew();
        await foreach (TrainingBatch batch in train.BatchesAsync(order, settings.BatchSize, ct))
        {
            using (batch)
            using (var scope = NewDisposeScope())
            {
                Tensor input = batch.Input;
                if (train.AreImages)
                {
                    input = ImageAugmenter.Apply(input, plan.Augmentation, generator);
                    input = trainer.FrozenActivations(input);
                }
                (double loss, int right) = trainer.Step(input, batch.Labels);
                if (!double.IsFinite(loss))
                {
                    // A diverged trial fails with its reason (the sweep goes on); its metrics could not even be recorded.
                    throw new ArgumentException($"training diverged at epoch {epoch} batch {batchIndex + 1} (loss {loss}): lower lr (now {trainer.LearningRate:G3})");
                }
                lossSum += loss * batch.Count;
                correct += right;
                seen += batch.Count;
            }
            batchIndex++;
            if (lastReport.Elapsed.TotalSeconds >= 1 || batchIndex == batches)
            {
                lastReport.Restart();
                double rate = seen / Math.Max(clock.Elapsed.TotalSeconds, 1e-6);
                jobs.ReportThroughput(rate);
                progress?.Invoke(new TrialProgress
                {
                    TrialId = job.TrialId, Segment = job.Segment, Epoch = epoch, Epochs = settings.Epochs, Batch = batchIndex, Batches = batches,
                    Phase = stage == "head" ? "head" : "train", Loss = lossSum / Math.Max(1, seen), ImagesPerSecond = rate,
                });
            }
        }
        if (seen == 0)
        {
            throw new ArgumentException("no training image could be used: every one was skipped");
        }
        return new EpochMetrics(lossSum / seen, (double)correct / seen, seen, clock.Elapsed.TotalSeconds);
    }

    private static async Task<EpochMetrics> EvaluateAsync(
        SuffixTrainer trainer, TrainingRows split, int batchSize, TrainSegment job, int epoch, string phase, Action<TrialProgress>? progress, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        double lossSum = 0;
        long correct = 0;
        int seen = 0;
        await foreach (TrainingBatch batch in split.BatchesAsync(null, batchSize, ct))
        {
            using (batch)
            {
                (double loss, int right) = split.AreImages ? trainer.EvaluateImages(batch.Input, batch.Labels) : trainer.EvaluateBatch(batch.Input, batch.Labels);
                lossSum += loss;
                correct += right;
                seen += batch.Count;
            }
        }
        progress?.Invoke(new TrialProgress
        {
            TrialId = job.TrialId, Segment = job.Segment, Epoch = epoch, Epochs = job.Settings.Epochs, Batch = 1, Batches = 1, Phase = phase,
            Loss = lossSum / Math.Max(1, seen), ImagesPerSecond = seen / Math.Max(clock.Elapsed.TotalSeconds, 1e-6),
        });
        if (!double.IsFinite(lossSum))
        {
            throw new ArgumentException($"training diverged by epoch {epoch}: the {phase} loss is {lossSum / Math.Max(1, seen)}; lower lr");
        }
        return seen == 0 ? throw new ArgumentException($"the {phase} split has no usable image") : new EpochMetrics(lossSum / seen, (double)correct / seen, seen, clock.Elapsed.TotalSeconds);
    }

    // ---- feature-extractor: another classifier on the cached features ----

    private async Task<(List<CheckpointTensor> Tensors, double? TestAccuracy)> TrainHeadAsync(
        TrainSegment job, TrialPlan plan, TrialSplits splits, TrainingState state, List<EpochRow> rows, CancellationToken ct)
    {
        TrialSettings settings = job.Settings;
        var clock = Stopwatch.StartNew();
        FeatureRows train = await splits.HeadRowsAsync("train", ct);
        FeatureRows validation = await splits.HeadRowsAsync("validation", ct);
        // The spec's epochs are the mlp's (the reference's top model trains for epochs); sdca keeps its own passes (30 by
        // default: a handful leaves it far from converged), logistic and knn have none.
        var defaults = new HeadSettings();
        var headSettings = new HeadSettings { Epochs = plan.Head == HeadKind.Mlp ? settings.Epochs : defaults.Epochs, BatchSize = settings.BatchSize, LearningRate = settings.Lr, WeightDecay = settings.WeightDecay, Seed = settings.Seed };
        using FeatureHead head = FeatureHead.Train(plan.Head!.Value, train, job.Data.ClassNames.Count, headSettings);
        double trainSeconds = clock.Elapsed.TotalSeconds;
        (double trainLoss, double trainAccuracy) = Score(head, train);
        rows.Add(new EpochRow(settings.Epochs - 1, "train", trainLoss, trainAccuracy, train.Rows / Math.Max(trainSeconds, 1e-6), trainSeconds, settings.Lr));
        var scoring = Stopwatch.StartNew();
        (double valLoss, double valAccuracy) = Score(head, validation);
        rows.Add(new EpochRow(settings.Epochs - 1, "validation", valLoss, valAccuracy, validation.Rows / Math.Max(scoring.Elapsed.TotalSeconds, 1e-6), scoring.Elapsed.TotalSeconds));
        state.EpochDone(settings.Epochs - 1, "head", valAccuracy, patience: null);
        double? testAccuracy = null;
        if (splits.HasTest)
        {
            FeatureRows test = await splits.HeadRowsAsync("test", ct);
            scoring.Restart();
            (double testLoss, double accuracy) = Score(head, test);
            rows.Add(new EpochRow(settings.Epochs - 1, "test", testLoss, accuracy, test.Rows / Math.Max(scoring.Elapsed.TotalSeconds, 1e-6), scoring.Elapsed.TotalSeconds));
            testAccuracy = accuracy;
        }
        logger.LogInformation("Trial {Trial}: head {Head} on {Rows} rows of {Columns} features, validation accuracy {Accuracy:P2}",
            job.TrialId, settings.Head, train.Rows, train.Columns, valAccuracy);
        return (head.ToCheckpointTensors().Select(t => ToCheckpoint($"head/{t.Name}", t.Value)).ToList(), testAccuracy);
    }

    /// <summary>Mean log loss (probabilities clipped at 1e-15, as scikit-learn's log_loss) and accuracy.</summary>
    private static (double Loss, double Accuracy) Score(FeatureHead head, FeatureRows rows)
    {
        double[] probabilities = head.PredictProbabilities(rows);
        int[] labels = rows.RequireLabels();
        int classes = head.ClassCount;
        double loss = 0;
        int correct = 0;
        for (int i = 0; i < rows.Rows; i++)
        {
            ReadOnlySpan<double> p = probabilities.AsSpan(i * classes, classes);
            loss -= Math.Log(Math.Max(p[labels[i]], 1e-15));
            int best = 0;
            for (int c = 1; c < classes; c++)
            {
                if (p[c] > p[best])
                {
                    best = c;
                }
            }
            correct += best == labels[i] ? 1 : 0;
        }
        return (loss / rows.Rows, (double)correct / rows.Rows);
    }

    // ---- data ----

    private async Task<TrialSplits> LoadSplitsAsync(TrainSegment job, TrialPlan plan, CancellationToken ct)
    {
        TrialData data = job.Data;
        var classIndex = data.ClassNames.Select((name, i) => (name, i)).ToDictionary(p => p.name, p => p.i, StringComparer.Ordinal);
        DatasetManifest train = await manifests.GetAsync(data.TrainDatasetId, ct);
        int[] trainLabels = LabelsOf(train, classIndex);
        (int[] kept, int[] heldOut) = data.ValidationDatasetId is null
            ? StratifiedSplit.Split(trainLabels, data.ValidationFraction, data.SplitSeed)
            : ([.. Enumerable.Range(0, train.Entries.Count)], []);
        var parts = new Dictionary<string, (DatasetManifest Dataset, int[] Positions)>(StringComparer.Ordinal)
        {
            ["train"] = (train, kept),
        };
        if (data.ValidationDatasetId is string validationId)
        {
            DatasetManifest validation = await manifests.GetAsync(validationId, ct);
            parts["validation"] = (validation, [.. Enumerable.Range(0, validation.Entries.Count)]);
        }
        else
        {
            parts["validation"] = (train, heldOut);
        }
        if (data.TestDatasetId is string testId)
        {
            DatasetManifest test = await manifests.GetAsync(testId, ct);
            parts["test"] = (test, [.. Enumerable.Range(0, test.Entries.Count)]);
        }
        if (parts["validation"].Positions.Length == 0)
        {
            throw new ArgumentException("the validation split is empty");
        }
        return new TrialSplits(job, plan, parts, classIndex, residentFeatures.AcquireAsync);
    }

    private static int[] LabelsOf(DatasetManifest dataset, IReadOnlyDictionary<string, int> classIndex) =>
        [.. dataset.Entries.Select(e => classIndex.TryGetValue(e.Label, out int label)
            ? label
            : throw new ArgumentException($"dataset {dataset.Id} has class '{e.Label}', which is not among the trial's {classIndex.Count} classes"))];

    /// <summary>
    /// The splits of one trial, as images or as activations cached at a stage's tap, each built on first use; a feature set
    /// is loaded once for all the splits it serves. Training from the cache is exact (the frozen prefix in eval mode gives
    /// the same activations every epoch), so it is used whenever the trial does not augment.
    /// </summary>
    private sealed class TrialSplits(
        TrainSegment job, TrialPlan plan, Dictionary<string, (DatasetManifest Dataset, int[] Positions)> parts, IReadOnlyDictionary<string, int> classIndex,
        Func<string, CancellationToken, Task<ResidentFeatureSets.FeatureLease>> leaseFeatures) : IDisposable
    {
        private readonly Dictionary<string, TrainingRows> _rows = new(StringComparer.Ordinal);
        private readonly Dictionary<string, ImageBatchPipeline> _pipelines = new(StringComparer.Ordinal);
        private readonly Dictionary<string, ResidentFeatureSets.FeatureLease> _features = new(StringComparer.Ordinal);

        public bool HasTest => parts.ContainsKey("test");

        /// <summary>A split's rows for a stage: the stage tap's cached activations when the trial has them, else images.</summary>
        public async Task<TrainingRows> ForAsync(string split, string stage, CancellationToken ct)
        {
            string key = $"{split}/{stage}";
            if (_rows.TryGetValue(key, out TrainingRows? rows))
            {
                return rows;
            }
            (DatasetManifest dataset, int[] positions) = parts[split];
            int[] labels = LabelsOf(dataset, classIndex);
            IReadOnlyDictionary<string, string> cache = stage == "head" && plan.Strategy == TrainingStrategy.FineTuneTop ? job.Data.HeadFeatures : job.Data.CutoffFeatures;
            if (plan.Augmentation == Augmentation.None && cache.TryGetValue(dataset.Id, out string? featureSet))
            {
                (Extraction.CachedFeatures features, long[] cachePositions, int[] cachedLabels) = await CachedAsync(featureSet, positions, labels, ct);
                rows = new CachedRows(features, cachePositions, cachedLabels);
            }
            else if (plan.Strategy == TrainingStrategy.FeatureExtractor)
            {
                throw new ArgumentException($"feature-extractor trial has no cached features for dataset {dataset.Id}");
            }
            else
            {
                rows = new ImageRows(Pipeline(dataset.Root), [.. positions.Select(p => dataset.Entries[p].Path)], [.. positions.Select(p => labels[p])]);
            }
            _rows[key] = rows;
            return rows;
        }

        /// <summary>A split as a head's feature rows (feature-extractor), from the cached features at the trial's tap.</summary>
        public async Task<FeatureRows> HeadRowsAsync(string split, CancellationToken ct)
        {
            (DatasetManifest dataset, int[] positions) = parts[split];
            string featureSet = job.Data.CutoffFeatures.TryGetValue(dataset.Id, out string? key)
                ? key : throw new ArgumentException($"feature-extractor trial has no cached features for dataset {dataset.Id}");
            (Extraction.CachedFeatures features, long[] cachePositions, int[] labels) = await CachedAsync(featureSet, positions, LabelsOf(dataset, classIndex), ct);
            using Tensor values = features.Take(cachePositions);
            int columns = (int)(values.numel() / Math.Max(1, values.shape[0]));
            return new FeatureRows(values.reshape(values.shape[0], columns).data<float>().ToArray(), columns, labels);
        }

        /// <summary>The cache positions of a split's dataset rows (images the extraction skipped are left out) and their labels.</summary>
        private async Task<(Extraction.CachedFeatures Features, long[] Positions, int[] Labels)> CachedAsync(string featureSet, int[] positions, int[] labels, CancellationToken ct)
        {
            if (!_features.TryGetValue(featureSet, out ResidentFeatureSets.FeatureLease? lease))
            {
                // Held for the segment; resident after it, so the next trial of this prefix on this worker reads nothing.
                lease = await leaseFeatures(featureSet, ct);
                _features[featureSet] = lease;
            }
            Extraction.CachedFeatures features = lease.Features;
            var cachePositions = new List<long>(positions.Length);
            var kept = new List<int>(positions.Length);
            foreach (int row in positions)
            {
                int at = Array.BinarySearch(features.Rows, (long)row);
                if (at >= 0)
                {
                    cachePositions.Add(at);
                    kept.Add(labels[row]);
                }
            }
            return (features, [.. cachePositions], [.. kept]);
        }

        private ImageBatchPipeline Pipeline(string root)
        {
            if (!_pipelines.TryGetValue(root, out ImageBatchPipeline? pipeline))
            {
                pipeline = new ImageBatchPipeline(plan.Architecture.Preprocessing.AtSize(job.Settings.InputSize), new ImagePipelineOptions
                {
                    BatchSize = job.Settings.BatchSize,
                    MaxBuffers = 4,
                    Decoder = new ImageDecoderOptions { Root = root },
                });
                _pipelines[root] = pipeline;
            }
            return pipeline;
        }

        public void Dispose()
        {
            foreach (ResidentFeatureSets.FeatureLease lease in _features.Values)
            {
                lease.Dispose();
            }
        }
    }

    // ---- models and checkpoints ----

    private Backbone BuildModel(TrialPlan plan, TrialSettings settings, int classes)
    {
        ArchitectureInfo architecture = plan.Architecture;
        var options = new BackboneOptions(IncludeTop: true, NumClasses: classes);
        // Seeded: the new head's initial weights (and from-scratch's every weight) are the same for the same seed.
        torch.random.manual_seed(settings.Seed);
        Backbone model = architecture.Build(options);
        if (plan.Strategy != TrainingStrategy.FromScratch && settings.Weights == "random")
        {
            // "random:SEED" weights are what the extractor builds (seeded, with the architecture's own head): the same
            // draws here, so a prefix trained on cached activations pairs with the weights that computed them.
            torch.random.manual_seed(long.Parse(settings.WeightsHash["random:".Length..], CultureInfo.InvariantCulture));
            using Backbone reference = architecture.Build();
            var classifier = new HashSet<string>(model.Steps.Where(s => s.IsClassifier).Select(s => s.Name), StringComparer.Ordinal);
            Dictionary<string, Tensor> prefix = reference.state_dict().Where(p => !classifier.Contains(p.Key.Split('.')[0])).ToDictionary(p => p.Key, p => p.Value, StringComparer.Ordinal);
            WeightsLoader.Apply(model, prefix, strict: false);
        }
        if (plan.Strategy != TrainingStrategy.FromScratch && settings.Weights is not ("builtin" or "random"))
        {
            using StateDict weights = StateDictFile.Load(store.Resolve(settings.Weights));
            WeightsLoadReport report = WeightsLoader.Apply(model, weights, strict: false);
            logger.LogInformation("Loaded {Count} tensors into {Model} from {Weights} (the new {Classes}-class head stays initialised)", report.Loaded, settings.Model, settings.Weights, classes);
        }
        return model;
    }

    private static void RestoreModel(Backbone model, LoadedCheckpoint checkpoint)
    {
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (CheckpointTensor t in checkpoint.Tensors.Where(t => t.Name.StartsWith("model/", StringComparison.Ordinal)))
            {
                tensors[t.Name["model/".Length..]] = FromCheckpoint(t);
            }
            WeightsLoader.Apply(model, tensors, strict: true);
        }
        catch (WeightsMismatchException e)
        {
            throw new ArgumentException($"checkpoint of segment {checkpoint.Info.Segment} does not fit {model.GetName()}: {e.Message}", e);
        }
        finally
        {
            foreach (Tensor t in tensors.Values)
            {
                t.Dispose();
            }
        }
    }

    private static Tensor RestoreTensor(LoadedCheckpoint checkpoint, string name)
    {
        CheckpointTensor t = checkpoint.Tensor(name);
        return FromCheckpoint(t);
    }

    internal static CheckpointTensor ToCheckpoint(string name, Tensor value)
    {
        using Tensor contiguous = value.detach().cpu().contiguous();
        if (!TensorBytes.TryToSafetensors(contiguous.dtype, out SafetensorsDtype dtype))
        {
            throw new InvalidOperationException($"{name}: dtype {contiguous.dtype} has no safetensors equivalent");
        }
        var bytes = new byte[contiguous.numel() * contiguous.ElementSize];
        int offset = 0;
        TensorBytes.Drain(contiguous, chunk =>
        {
            chunk.CopyTo(bytes.AsSpan(offset));
            offset += chunk.Length;
        });
        return new CheckpointTensor(name, dtype, contiguous.shape, bytes);
    }

    internal static Tensor FromCheckpoint(CheckpointTensor t)
    {
        Tensor result = empty([.. t.Shape], TensorBytes.ToScalarType(t.Dtype));
        ReadOnlyMemory<byte> data = t.Data;
        TensorBytes.Fill(result, (offset, destination) => data.Span.Slice((int)offset, destination.Length).CopyTo(destination));
        return result;
    }

    private static CheckpointTensor BytesTensor(string name, byte[] bytes) => new(name, SafetensorsDtype.U8, [bytes.Length], bytes);
}
