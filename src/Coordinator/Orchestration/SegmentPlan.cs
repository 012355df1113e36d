using Cluster.Contracts.Training;

namespace Cluster.Coordinator.Orchestration;

/// <summary>How a trial's epochs split into bounded segments (pure: the scheduler and its tests share it).</summary>
public static class SegmentPlan
{
    /// <summary>Segment i trains epochs [i·k, min((i+1)·k, epochs)); a feature-extractor trial is one segment (its head trains in one go).</summary>
    public static IReadOnlyList<(int From, int To)> Segments(TrialSettings settings, int segmentEpochs)
    {
        ArgumentNullException.ThrowIfNull(settings);
        if (settings.Strategy == "feature-extractor")
        {
            return [(0, settings.Epochs)];
        }
        int k = Math.Max(1, segmentEpochs);
        return [.. Enumerable.Range(0, (settings.Epochs + k - 1) / k).Select(i => (i * k, Math.Min((i + 1) * k, settings.Epochs)))];
    }

    public static TrainSegment Command(Guid sweepId, PlannedTrial trial, int segment) => Command(sweepId, trial.TrialId, trial.Settings, trial.Data, trial.SegmentEpochs, segment);

    public static TrainSegment Command(Guid sweepId, Guid trialId, TrialSettings settings, TrialData data, int segmentEpochs, int segment)
    {
        IReadOnlyList<(int From, int To)> segments = Segments(settings, segmentEpochs);
        (int from, int to) = segments[segment];
        return new TrainSegment
        {
            SweepId = sweepId, TrialId = trialId, Segment = segment, EpochFrom = from, EpochTo = to,
            IsLast = segment == segments.Count - 1, Settings = settings, Data = data,
        };
    }
}
