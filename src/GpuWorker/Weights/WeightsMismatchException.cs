namespace Cluster.GpuWorker.Weights;

/// <summary>
/// A strict load found keys missing, unexpected or mismatched. Nothing was copied into the module. The message
/// is the report's readable diff.
/// </summary>
public sealed class WeightsMismatchException : Exception
{
    public WeightsMismatchException(WeightsLoadReport report)
        : base(report.ToString() + Environment.NewLine + "Nothing was loaded; pass strict: false to load the tensors that match.")
    {
        Report = report;
    }

    public WeightsLoadReport Report { get; }
}
