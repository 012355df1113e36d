using Cluster.GpuWorker.Models;

namespace Cluster.Coordinator.Specs;

/// <summary>
/// A sweep spec (DESIGN.md, "The sweep spec"), parsed and checked: every value is one the cluster can run, and every
/// hyperparameter field says whether it is one value, a list or a distribution. The field names are the contract.
/// </summary>
public sealed record SweepSpec
{
    /// <summary>fine-tune-top's cutoff when the spec gives none and the model is a ResNet: the last stage stays trainable.</summary>
    public const string ResNetFineTuneTopCutoff = "layer3";

    /// <summary>What error messages name the spec by (the path as the user gave it).</summary>
    public required string Source { get; init; }

    /// <summary>The YAML as read (the `sweeps` table keeps it, and its hash).</summary>
    public required string Text { get; init; }

    /// <summary>The folder relative paths were resolved against (the spec file's).</summary>
    public required string BaseDirectory { get; init; }

    public required string Name { get; init; }

    public required DatasetSpec Dataset { get; init; }

    public required SpecValue<string> Model { get; init; }

    public required SpecValue<SpecWeights> Weights { get; init; }

    /// <summary>Null: the model's native size.</summary>
    public SpecValue<int>? InputSize { get; init; }

    public required SpecValue<string> Strategy { get; init; }

    /// <summary>
    /// Null: feature-extractor takes the model's default tap (<see cref="ArchitectureInfo.DefaultTap"/>), fine-tune-top
    /// <see cref="ResNetFineTuneTopCutoff"/> (the parser allows a missing cutoff with fine-tune-top for ResNets only).
    /// </summary>
    public SpecValue<string>? Cutoff { get; init; }

    public required SpecValue<string> Head { get; init; }

    public required SpecValue<double> Lr { get; init; }

    /// <summary>Null: the backbone steps at lr.</summary>
    public SpecValue<double>? BackboneLrScale { get; init; }

    public required OptimizerSpec Optimizer { get; init; }

    public required SpecValue<string> Schedule { get; init; }

    public required SpecValue<int> Epochs { get; init; }

    public required SpecValue<int> BatchSize { get; init; }

    public required SpecValue<string> Augment { get; init; }

    public required SpecValue<string> Precision { get; init; }

    public required SpecValue<long> Seed { get; init; }

    /// <summary>Early stopping: epochs without a better metric before a trial stops; null: never early.</summary>
    public SpecValue<int>? Patience { get; init; }

    /// <summary>fine-tune-top's first stage: epochs training the new head alone before the top layers are unfrozen.</summary>
    public required SpecValue<int> HeadEpochs { get; init; }

    /// <summary>The step schedule: the rate is multiplied by <see cref="StepGamma"/> every this many epochs.</summary>
    public int StepEpochs { get; init; } = 10;

    public double StepGamma { get; init; } = 0.1;

    /// <summary>Epochs per TrainSegment: segments stay short so preemption, redelivery and ASHA's rungs cut cleanly.</summary>
    public int SegmentEpochs { get; init; } = 2;

    public required SearchSpec Search { get; init; }

    public required MetricSpec Metric { get; init; }

    public int Parallelism { get; init; } = 1;

    public required BudgetSpec Budget { get; init; }

    /// <summary>`strategy: auto`'s thresholds (the defaults when the spec has no `auto`).</summary>
    public AutoSpec Auto { get; init; } = AutoSpec.Default;

    /// <summary>The largest spec file read.</summary>
    public const long MaxBytes = 1 << 20;

    /// <summary>
    /// Parses and checks a spec. Relative paths (dataset, weights files) are taken from <paramref name="baseDirectory"/>,
    /// the spec file's folder (default: the current directory). Throws <see cref="SpecException"/> at the first problem.
    /// </summary>
    public static SweepSpec Parse(string yamlText, string sourceName, string? baseDirectory = null) =>
        new SweepSpecParser(sourceName, Path.GetFullPath(baseDirectory ?? Directory.GetCurrentDirectory())).Parse(yamlText);

    /// <summary>Reads and parses a spec file; its folder is where relative paths start.</summary>
    public static SweepSpec Load(string path)
    {
        string text;
        try
        {
            // Checked before reading: a spec is a page of YAML, and a runaway file (a generated list, a wrong path
            // to a data file) must not be read whole into memory and parsed first.
            long size = new FileInfo(path).Length;
            if (size > MaxBytes)
            {
                throw new SpecException(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                    $"{path}: the spec is {size / 1048576.0:F1} MiB; a sweep spec is at most {MaxBytes / 1024} KiB (give ranges or distributions instead of long lists)"));
            }
            text = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new SpecException($"{path}: cannot read the spec ({e.Message})", e);
        }
        return Parse(text, path, Path.GetDirectoryName(Path.GetFullPath(path)));
    }

    /// <summary>The hyperparameter fields in the spec's order (optional ones only where given).</summary>
    public IEnumerable<ISpecValue> Hyperparameters
    {
        get
        {
            ISpecValue?[] all =
            [
                Model, Weights, InputSize, Strategy, Cutoff, Head, Lr, BackboneLrScale, Optimizer.Name, Optimizer.Momentum,
                Optimizer.WeightDecay, Schedule, Epochs, BatchSize, Augment, Precision, Seed, Patience, HeadEpochs,
            ];
            return all.OfType<ISpecValue>();
        }
    }

    /// <summary>Every hyperparameter field has exactly one value: the sweep is one trial.</summary>
    public bool IsSingleTrial => Hyperparameters.All(v => v.IsSingle);

    /// <summary>
    /// The one trial of a one-trial spec, with the defaults the spec leaves to the model resolved (input size, cutoff).
    /// Throws <see cref="SpecException"/> naming the first field with several values.
    /// </summary>
    public TrialChoice SingleTrial()
    {
        ISpecValue? several = Hyperparameters.FirstOrDefault(v => !v.IsSingle);
        if (several is not null)
        {
            string what = several.Count is int n
                ? $"has {n} values"
                : $"is a {(several.Kind == SpecValueKind.LogUniform ? "log_uniform" : "uniform")} distribution";
            throw new SpecException(
                $"{Source} line {several.Line}: {several.Field} {what}; `sweep run` of a multi-trial sweep comes with the search methods (issue 11)");
        }
        return Trial(SingleValues.Instance);
    }

    /// <summary>
    /// One trial of the sweep: each hyperparameter field's value as <paramref name="pick"/> chooses it (a grid position,
    /// a random draw, the one value), with the defaults the spec leaves to the model resolved (input size, cutoff).
    /// </summary>
    public TrialChoice Trial(ISpecValuePicker pick)
    {
        ArgumentNullException.ThrowIfNull(pick);
        ArchitectureInfo architecture = ModelCatalog.Find(pick.Pick(Model));
        string strategy = pick.Pick(Strategy);
        return new TrialChoice
        {
            Model = architecture.Name,
            Weights = pick.Pick(Weights),
            InputSize = InputSize is null ? architecture.InputSize : pick.Pick(InputSize),
            Strategy = strategy,
            Cutoff = Cutoff is null ? DefaultCutoff(strategy, architecture) : pick.Pick(Cutoff),
            Head = pick.Pick(Head),
            Lr = pick.Pick(Lr),
            BackboneLrScale = BackboneLrScale is null ? null : pick.Pick(BackboneLrScale),
            Optimizer = pick.Pick(Optimizer.Name),
            Momentum = pick.Pick(Optimizer.Momentum),
            WeightDecay = pick.Pick(Optimizer.WeightDecay),
            Schedule = pick.Pick(Schedule),
            StepEpochs = StepEpochs,
            StepGamma = StepGamma,
            Epochs = pick.Pick(Epochs),
            BatchSize = pick.Pick(BatchSize),
            Augment = pick.Pick(Augment),
            Precision = pick.Pick(Precision),
            Seed = pick.Pick(Seed),
            Patience = Patience is null ? null : pick.Pick(Patience),
            HeadEpochs = pick.Pick(HeadEpochs),
        };
    }

    /// <summary>Each field's one value (a one-trial spec).</summary>
    private sealed class SingleValues : ISpecValuePicker
    {
        public static SingleValues Instance { get; } = new();

        public T Pick<T>(SpecValue<T> value)
            where T : notnull => value.Single;
    }

    /// <summary>
    /// A trial's values by the spec's field names: the `params` of DESIGN.md's results format. Fields without a value
    /// (no cutoff for fine-tune-all, no patience) are left out rather than written as null.
    /// </summary>
    public static IReadOnlyDictionary<string, object> Params(TrialChoice trial)
    {
        ArgumentNullException.ThrowIfNull(trial);
        var values = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["model"] = trial.Model,
            ["weights"] = trial.Weights.Text,
            ["input_size"] = trial.InputSize,
            ["strategy"] = trial.Strategy,
            ["cutoff"] = trial.Cutoff,
            ["head"] = trial.Head,
            ["lr"] = trial.Lr,
            ["backbone_lr_scale"] = trial.BackboneLrScale,
            ["optimizer"] = trial.Optimizer,
            ["optimizer.momentum"] = trial.Momentum,
            ["optimizer.weight_decay"] = trial.WeightDecay,
            ["schedule"] = trial.Schedule,
            ["epochs"] = trial.Epochs,
            ["batch_size"] = trial.BatchSize,
            ["augment"] = trial.Augment,
            ["precision"] = trial.Precision,
            ["seed"] = trial.Seed,
            ["patience"] = trial.Patience,
            ["head_epochs"] = trial.HeadEpochs,
        };
        return values.Where(p => p.Value is not null).ToDictionary(p => p.Key, p => p.Value!, StringComparer.Ordinal);
    }

    /// <summary>Where a trial cuts when the spec names no cutoff (null: the strategy trains from the images, or auto decides).</summary>
    private static string? DefaultCutoff(string strategy, ArchitectureInfo architecture) => strategy switch
    {
        SpecNames.FeatureExtractor => architecture.DefaultTap,
        SpecNames.FineTuneTop => ResNetFineTuneTopCutoff,
        _ => null,
    };
}
