using Cluster.GpuWorker.Models;

namespace Cluster.GpuWorker.Training;

public enum ScheduleKind
{
    Constant,

    /// <summary>The rate times <see cref="LearningRateSchedule.StepGamma"/> every <see cref="LearningRateSchedule.StepEpochs"/> epochs (PyTorch's StepLR).</summary>
    Step,

    /// <summary>Half a cosine from the full rate at epoch 0 towards 0 at the last epoch (PyTorch's CosineAnnealingLR, eta_min 0, T_max = epochs).</summary>
    Cosine,
}

/// <summary>
/// The learning rate of each epoch, as a factor of the base rates: a pure function of the epoch, so a trial resumed from a
/// checkpoint at any epoch steps at exactly the rates an uninterrupted one would.
/// </summary>
public sealed record LearningRateSchedule(ScheduleKind Kind, int Epochs, int StepEpochs = 10, double StepGamma = 0.1)
{
    private static readonly NameTable<ScheduleKind> s_names = new("schedule", "a trial", new Dictionary<string, ScheduleKind>(StringComparer.Ordinal)
    {
        ["constant"] = ScheduleKind.Constant,
        ["step"] = ScheduleKind.Step,
        ["cosine"] = ScheduleKind.Cosine,
    });

    public static IReadOnlyCollection<string> Names => s_names.Names;

    public static ScheduleKind Parse(string name) => s_names.Parse(name);

    public double Factor(int epoch)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(epoch);
        return Kind switch
        {
            ScheduleKind.Constant => 1.0,
            ScheduleKind.Step => Math.Pow(StepGamma, epoch / Math.Max(1, StepEpochs)),
            ScheduleKind.Cosine => 0.5 * (1 + Math.Cos(Math.PI * epoch / Math.Max(1, Epochs))),
            _ => throw new ArgumentOutOfRangeException(nameof(Kind), Kind, null),
        };
    }
}
