namespace Cluster.Coordinator.Specs;

/// <summary>How a hyperparameter field is written in the spec.</summary>
public enum SpecValueKind
{
    /// <summary>One plain value (`lr: 0.001`).</summary>
    One,

    /// <summary>A YAML list (`head: [logistic, mlp]`).</summary>
    List,

    /// <summary>`{choice: [v1, v2, ...]}`: values a search method draws from.</summary>
    Choice,

    /// <summary>`{uniform: [a, b]}`: a number drawn uniformly from [a, b].</summary>
    Uniform,

    /// <summary>`{log_uniform: [a, b]}`: a number whose logarithm is uniform (a &gt; 0), the usual way to search rates.</summary>
    LogUniform,
}

/// <summary>What every hyperparameter field says about itself, whatever the type of its values.</summary>
public interface ISpecValue
{
    /// <summary>The spec's name of the field (`lr`, `optimizer.momentum`).</summary>
    string Field { get; }

    /// <summary>The line (from 1) where the value is written; 0 for a default, which is in no line.</summary>
    int Line { get; }

    SpecValueKind Kind { get; }

    /// <summary>Exactly one value: a trial can take it as it is.</summary>
    bool IsSingle { get; }

    /// <summary>How many values a grid would enumerate; null for a continuous distribution.</summary>
    int? Count { get; }
}

/// <summary>
/// One hyperparameter field of a sweep spec: one value, a list, a choice, or a uniform or log-uniform distribution,
/// every value (or both bounds) already checked against the field's rules.
/// </summary>
public sealed record SpecValue<T> : ISpecValue
    where T : notnull
{
    public required string Field { get; init; }

    public required int Line { get; init; }

    public required SpecValueKind Kind { get; init; }

    /// <summary>The values of One, List and Choice; empty for a distribution.</summary>
    public IReadOnlyList<T> Values { get; init; } = [];

    /// <summary>The line of each of <see cref="Values"/> (a list may span lines); 0 for a default.</summary>
    public IReadOnlyList<int> Lines { get; init; } = [];

    /// <summary>The lower bound of a distribution (0 otherwise).</summary>
    public double Low { get; init; }

    /// <summary>The upper bound of a distribution (0 otherwise).</summary>
    public double High { get; init; }

    public bool IsDistribution => Kind is SpecValueKind.Uniform or SpecValueKind.LogUniform;

    public bool IsSingle => !IsDistribution && Values.Count == 1;

    public int? Count => IsDistribution ? null : Values.Count;

    /// <summary>The one value; only when <see cref="IsSingle"/> (<see cref="SweepSpec.SingleTrial"/> checks that first).</summary>
    public T Single => IsSingle ? Values[0] : throw new InvalidOperationException($"{Field} has more than one value");

    /// <summary>A field absent from the spec: its default, in no line.</summary>
    internal static SpecValue<T> Default(string field, T value) =>
        new() { Field = field, Line = 0, Kind = SpecValueKind.One, Values = [value], Lines = [0] };
}

/// <summary>
/// Chooses each hyperparameter field's value for one trial: the one value, a grid position, a random draw
/// (<see cref="SweepSpec.Trial"/> asks it once per field).
/// </summary>
public interface ISpecValuePicker
{
    T Pick<T>(SpecValue<T> value)
        where T : notnull;
}
