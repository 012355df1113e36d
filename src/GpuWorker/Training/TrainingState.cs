using System.Globalization;
using System.Text.Json;
using Cluster.Contracts.Training;
using Cluster.Storage.Checkpoints;

namespace Cluster.GpuWorker.Training;

/// <summary>
/// What a trial carries from epoch to epoch besides tensors: the last epoch done and its stage, the best validation
/// accuracy and its epoch, epochs since it improved (early stopping), kept in the checkpoint's JSON.
/// </summary>
public sealed class TrainingState
{
    public int? LastEpoch { get; private set; }

    public string? Stage { get; set; }

    public double? LastValidationAccuracy { get; private set; }

    public double? BestValidationAccuracy { get; private set; }

    public int? BestEpoch { get; private set; }

    public int EpochsSinceBest { get; private set; }

    public bool StoppedEarly { get; private set; }

    public static TrainingState From(CheckpointInfo info)
    {
        ArgumentNullException.ThrowIfNull(info);
        IReadOnlyDictionary<string, string> s = info.State;
        return new TrainingState
        {
            LastEpoch = info.Epoch,
            Stage = s.GetValueOrDefault("stage"),
            LastValidationAccuracy = info.Metric,
            BestValidationAccuracy = s.TryGetValue("best_accuracy", out string? best) ? double.Parse(best, CultureInfo.InvariantCulture) : null,
            BestEpoch = s.TryGetValue("best_epoch", out string? bestEpoch) ? int.Parse(bestEpoch, CultureInfo.InvariantCulture) : null,
            EpochsSinceBest = s.TryGetValue("epochs_since_best", out string? since) ? int.Parse(since, CultureInfo.InvariantCulture) : 0,
            StoppedEarly = s.GetValueOrDefault("stopped_early") == "true",
        };
    }

    /// <summary>Records an epoch's validation accuracy; stops the trial after <paramref name="patience"/> epochs without a better one.</summary>
    public void EpochDone(int epoch, string stage, double validationAccuracy, int? patience)
    {
        LastEpoch = epoch;
        Stage = stage;
        LastValidationAccuracy = validationAccuracy;
        if (BestValidationAccuracy is not double best || validationAccuracy > best)
        {
            BestValidationAccuracy = validationAccuracy;
            BestEpoch = epoch;
            EpochsSinceBest = 0;
        }
        else
        {
            EpochsSinceBest++;
            StoppedEarly = patience is int p && EpochsSinceBest >= p;
        }
    }

    /// <summary>The checkpoint's state: this, and what a reader of the checkpoint alone needs (`predict --checkpoint`).</summary>
    public IReadOnlyDictionary<string, string> ToDictionary(TrialSettings settings, TrialData data, string architecture)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(data);
        var state = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["model"] = settings.Model,
            // What was built: from-scratch on the imported ImageNet graph trains torchvision's layout of it.
            ["architecture"] = architecture,
            ["strategy"] = settings.Strategy,
            ["input_size"] = settings.InputSize.ToString(CultureInfo.InvariantCulture),
            ["weights"] = settings.WeightsHash,
            ["classes"] = JsonSerializer.Serialize(data.ClassNames),
            ["epochs_since_best"] = EpochsSinceBest.ToString(CultureInfo.InvariantCulture),
            ["stopped_early"] = StoppedEarly ? "true" : "false",
        };
        if (settings.Cutoff is string cutoff)
        {
            state["cutoff"] = cutoff;
        }
        if (settings.Head is string head && settings.Strategy == "feature-extractor")
        {
            state["head"] = head;
        }
        if (Stage is string stage)
        {
            state["stage"] = stage;
        }
        if (BestValidationAccuracy is double best)
        {
            state["best_accuracy"] = best.ToString("R", CultureInfo.InvariantCulture);
            state["best_epoch"] = BestEpoch!.Value.ToString(CultureInfo.InvariantCulture);
        }
        return state;
    }
}
