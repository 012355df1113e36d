using System.Globalization;
using System.Text;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Weights;

/// <summary>A tensor present in both the module and the weights whose shape or dtype does not fit.</summary>
public sealed record TensorMismatch(
    string Key,
    IReadOnlyList<long> ExpectedShape,
    ScalarType ExpectedDtype,
    IReadOnlyList<long> ActualShape,
    ScalarType ActualDtype)
{
    public override string ToString() =>
        $"{Key}: module has {WeightsLoadReport.Format(ExpectedShape, ExpectedDtype)}, weights have {WeightsLoadReport.Format(ActualShape, ActualDtype)}";
}

/// <summary>
/// How a set of weights matched a module, key by key: what the module has that the weights lack, what the
/// weights have that the module lacks, what both have in incompatible shapes or dtypes, and how many tensors
/// were copied. All lists are sorted by key.
/// </summary>
public sealed record WeightsLoadReport
{
    /// <summary>How many entries of each list <see cref="ToString"/> prints before "... and N more".</summary>
    public const int ListedPerSection = 20;

    /// <summary>The file the weights came from, when known.</summary>
    public string? Source { get; init; }

    /// <summary>State_dict keys of the module with no tensor in the weights (each with the module's shape and dtype).</summary>
    public IReadOnlyList<string> Missing { get; init; } = [];

    /// <summary>Keys in the weights that the module does not have.</summary>
    public IReadOnlyList<string> Unexpected { get; init; } = [];

    /// <summary>Keys in both whose shapes differ or whose dtypes cannot be converted.</summary>
    public IReadOnlyList<TensorMismatch> Mismatched { get; init; } = [];

    /// <summary>How many tensors were copied into the module (0 when a strict load refused).</summary>
    public int Loaded { get; init; }

    /// <summary>Things worth knowing that are not errors: dtype conversions, a stripped prefix, a checkpoint's entry used.</summary>
    public IReadOnlyList<string> Notes { get; init; } = [];

    /// <summary>The module's shape and dtype for each missing key, for printing.</summary>
    internal IReadOnlyDictionary<string, (IReadOnlyList<long> Shape, ScalarType Dtype)> MissingDetails { get; init; } =
        new Dictionary<string, (IReadOnlyList<long>, ScalarType)>();

    /// <summary>The weights' shape and dtype for each unexpected key, for printing.</summary>
    internal IReadOnlyDictionary<string, (IReadOnlyList<long> Shape, ScalarType Dtype)> UnexpectedDetails { get; init; } =
        new Dictionary<string, (IReadOnlyList<long>, ScalarType)>();

    /// <summary>Whether every key matched in name, shape and a convertible dtype.</summary>
    public bool IsExactMatch => Missing.Count == 0 && Unexpected.Count == 0 && Mismatched.Count == 0;

    /// <summary>
    /// The readable diff: a summary line, then each non-empty section with its first
    /// <see cref="ListedPerSection"/> entries, shapes printed as [64, 3, 7, 7].
    /// </summary>
    public override string ToString()
    {
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"Weights{(Source is null ? "" : $" from {Source}")}: ");
        text.Append(CultureInfo.InvariantCulture, $"{Loaded} loaded, {Missing.Count} missing, {Unexpected.Count} unexpected, {Mismatched.Count} mismatched.");

        AppendSection(text, "Missing from the weights (the module has them)", Missing.Select(key => Detailed(key, MissingDetails)).ToList());
        AppendSection(text, "Unexpected in the weights (the module has no such key)", Unexpected.Select(key => Detailed(key, UnexpectedDetails)).ToList());
        AppendSection(text, "Mismatched", Mismatched.Select(mismatch => mismatch.ToString()).ToList());
        foreach (var note in Notes)
        {
            text.AppendLine().Append("Note: ").Append(note);
        }
        return text.ToString();
    }

    internal static string Format(IReadOnlyList<long> shape, ScalarType dtype) =>
        $"[{string.Join(", ", shape)}] {TensorBytes.Name(dtype)}";

    private static string Detailed(string key, IReadOnlyDictionary<string, (IReadOnlyList<long> Shape, ScalarType Dtype)> details) =>
        details.TryGetValue(key, out var detail) ? $"{key} {Format(detail.Shape, detail.Dtype)}" : key;

    private static void AppendSection(StringBuilder text, string title, IReadOnlyList<string> lines)
    {
        if (lines.Count == 0)
        {
            return;
        }

        text.AppendLine().Append(CultureInfo.InvariantCulture, $"{title} ({lines.Count}):");
        foreach (var line in lines.Take(ListedPerSection))
        {
            text.AppendLine().Append("  ").Append(line);
        }
        if (lines.Count > ListedPerSection)
        {
            text.AppendLine().Append(CultureInfo.InvariantCulture, $"  ... and {lines.Count - ListedPerSection} more");
        }
    }
}
