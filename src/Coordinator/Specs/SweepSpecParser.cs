using System.Globalization;
using System.Text.RegularExpressions;
using Cluster.GpuWorker.Models;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace Cluster.Coordinator.Specs;

/// <summary>
/// Reads a sweep spec's YAML into a <see cref="SweepSpec"/>. It stops at the first problem with a one-line
/// <see cref="SpecException"/> ("spec.yaml line 9: lr 0 must be a positive number"): a user fixes one line at a time,
/// and a list of consequential errors after the first would mostly be noise.
/// </summary>
internal sealed partial class SweepSpecParser
{
    private static readonly string[] s_topFields =
    [
        "name", "dataset", "model", "weights", "input_size", "strategy", "cutoff", "head", "lr", "backbone_lr_scale",
        "optimizer", "schedule", "epochs", "batch_size", "augment", "precision", "seed", "patience", "head_epochs",
        "step_epochs", "step_gamma", "segment_epochs", "search", "metric", "parallelism", "budget", "auto",
    ];

    private static readonly string[] s_datasetFields = ["train", "validation", "test"];
    private static readonly string[] s_optimizerFields = ["name", "momentum", "weight_decay"];
    private static readonly string[] s_searchFields = ["method", "trials", "min_epochs", "reduction"];
    private static readonly string[] s_metricFields = ["name", "mode"];
    private static readonly string[] s_budgetFields = ["storage", "wall_time", "activations"];
    private static readonly string[] s_autoFields = ["similar_above", "big_from", "similarity"];
    private static readonly string[] s_activationDtypes = ["fp32", "bf16", "fp16", "auto"];
    private static readonly string[] s_distributions = ["uniform", "log_uniform", "choice"];

    // Binary and decimal units both: "20GiB" and "500MB" are what people write, and they mean different sizes.
    private static readonly Dictionary<string, long> s_storageUnits = new(StringComparer.OrdinalIgnoreCase)
    {
        ["B"] = 1,
        ["KB"] = 1_000, ["MB"] = 1_000_000, ["GB"] = 1_000_000_000, ["TB"] = 1_000_000_000_000,
        ["KiB"] = 1L << 10, ["MiB"] = 1L << 20, ["GiB"] = 1L << 30, ["TiB"] = 1L << 40,
    };

    private readonly string _source;
    private readonly string _baseDirectory;

    public SweepSpecParser(string source, string baseDirectory)
    {
        _source = source;
        _baseDirectory = baseDirectory;
    }

    private readonly record struct Entry(YamlScalarNode Key, YamlNode Value)
    {
        public int Line => LineOf(Key);
    }

    /// <summary>Checks one scalar (a value, a list item or a distribution's bound) against a field's rules.</summary>
    private delegate T ReadScalar<out T>(string field, YamlScalarNode scalar);

    public SweepSpec Parse(string text)
    {
        YamlMappingNode root = LoadRoot(text);
        Dictionary<string, Entry> top = Fields(root, parent: null, s_topFields);
        int rootLine = LineOf(root);

        ReadScalar<int> atLeastOne = Integer(1, int.MaxValue, "must be a whole number of at least 1");
        ReadScalar<double> positive = Number(v => v > 0, "must be a positive number");
        SweepSpec spec = new()
        {
            Source = _source,
            Text = text,
            BaseDirectory = _baseDirectory,
            Name = ReadName(top, rootLine),
            Dataset = ReadDataset(top, rootLine),
            Model = Field(top, "model", ModelName, null, BuiltInModels.ResNet18ImageNet),
            Weights = Field(top, "weights", Weights, null, SpecWeights.Builtin),
            InputSize = OptionalField(top, "input_size", Integer(16, 1024, "must be a whole number of pixels from 16 to 1024"), AsNumber),
            Strategy = Field(top, "strategy", Name(SpecNames.Strategies), null, SpecNames.FineTuneTop),
            Cutoff = OptionalField(top, "cutoff", Text, null),
            Head = Field(top, "head", Name(SpecNames.Heads), null, "logistic"),
            Lr = Field(top, "lr", positive, AsNumber, 0.001),
            BackboneLrScale = OptionalField(top, "backbone_lr_scale", positive, AsNumber),
            Optimizer = ReadOptimizer(top),
            Schedule = Field(top, "schedule", Name(SpecNames.Schedules), null, "constant"),
            Epochs = Field(top, "epochs", atLeastOne, AsNumber, 6),
            BatchSize = Field(top, "batch_size", Integer(1, 4096, "must be a whole number from 1 to 4096"), AsNumber, 32),
            Augment = Field(top, "augment", Name(SpecNames.Augments), null, "none"),
            Precision = Field(top, "precision", Name(SpecNames.Precisions), null, "fp32"),
            Seed = Field(top, "seed", Seed, AsNumber, 0L),
            Patience = OptionalField(top, "patience", atLeastOne, AsNumber),
            HeadEpochs = Field(top, "head_epochs", Integer(0, int.MaxValue, "must be a whole number of 0 or more"), AsNumber, 3),
            StepEpochs = Plain(top, "step_epochs", atLeastOne, 10),
            StepGamma = Plain(top, "step_gamma", Number(v => v is > 0 and <= 1, "must be a number in (0, 1]"), 0.1),
            SegmentEpochs = Plain(top, "segment_epochs", atLeastOne, 2),
            Search = ReadSearch(top),
            Metric = ReadMetric(top),
            Parallelism = Plain(top, "parallelism", atLeastOne, 1),
            Budget = ReadBudget(top),
            Auto = ReadAuto(top),
        };
        CheckWeights(spec);
        CheckCutoffs(spec);
        CheckAuto(spec);
        return spec;
    }

    private YamlMappingNode LoadRoot(string text)
    {
        var stream = new YamlStream();
        var scanner = new Scanner(new StringReader(text));
        try
        {
            stream.Load(new Parser(scanner));
        }
        catch (YamlException e)
        {
            // A tab in the indentation is reported at the start of the mapping it breaks, which can be far above it.
            int line = e.Message.Contains("tab", StringComparison.Ordinal) ? FirstTabIndentedLine(text) ?? (int)e.Start.Line : (int)e.Start.Line;
            throw new SpecException($"{_source} line {Math.Max(1, line)}: malformed YAML: {YamlProblem(e)}", e);
        }
        catch (InvalidOperationException e)
        {
            // YamlDotNet 18.1's scanner fails this way (no YamlException, no position) on some unfinished flow
            // collections, e.g. a list whose ']' is missing; where the scanner stopped is the line to look at.
            throw new SpecException(
                $"{_source} line {Math.Max(1, (int)scanner.CurrentPosition.Line)}: malformed YAML: the reader stopped here (a [ or {{ left open?)", e);
        }
        if (stream.Documents.Count == 0)
        {
            throw new SpecException($"{_source} line 1: the spec is empty; it needs at least name and dataset (train)");
        }
        if (stream.Documents.Count > 1)
        {
            throw Error(stream.Documents[1].RootNode, "a second YAML document (after ---); a spec file holds one sweep");
        }
        YamlNode root = stream.Documents[0].RootNode;
        return root as YamlMappingNode
            ?? throw Error(root, $"a spec is a mapping of fields (name: ..., dataset: ...), not {Describe(root)}");
    }

    private static int? FirstTabIndentedLine(string text)
    {
        string[] lines = text.Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            if (lines[i].TakeWhile(char.IsWhiteSpace).Contains('\t'))
            {
                return i + 1;
            }
        }
        return null;
    }

    /// <summary>YamlDotNet's message without the "(Line: 3, Col: 1, Idx: 20) - (...): " prefix: the line is ours to say.</summary>
    private static string YamlProblem(YamlException e)
    {
        string message = MarkPrefix().Replace(e.Message, "");
        return OneLine(message.Length > 0 ? message : e.GetType().Name);
    }

    [GeneratedRegex(@"^\(Line: \d+, Col: \d+, Idx: \d+\) - \(Line: \d+, Col: \d+, Idx: \d+\): ")]
    private static partial Regex MarkPrefix();

    /// <summary>The mapping's fields by name: unknown names are errors; fields set to null count as absent.</summary>
    private Dictionary<string, Entry> Fields(YamlMappingNode mapping, string? parent, IReadOnlyList<string> allowed)
    {
        string where = parent is null ? "" : $" in {parent}";
        var fields = new Dictionary<string, Entry>(StringComparer.Ordinal);
        foreach ((YamlNode keyNode, YamlNode value) in mapping.Children)
        {
            if (keyNode is not YamlScalarNode { Value: string key } scalarKey)
            {
                throw Error(keyNode, $"a field name must be plain text, not {Describe(keyNode)}; allowed{where}: {string.Join(", ", allowed)}");
            }
            if (!allowed.Contains(key))
            {
                throw Error(keyNode, $"unknown field '{Qualified(parent, key)}'; allowed{where}: {string.Join(", ", allowed)}");
            }
            // A repeated key never gets here: YamlDotNet refuses it ("Duplicate key") while loading.
            fields[key] = new Entry(scalarKey, value);
        }
        foreach (string key in fields.Where(f => IsNull(f.Value.Value)).Select(f => f.Key).ToList())
        {
            fields.Remove(key);
        }
        return fields;
    }

    private static string Qualified(string? parent, string key) => parent is null ? key : $"{parent}.{key}";

    // ---- hyperparameter fields: one value, a list, or a distribution ----

    private SpecValue<T> Field<T>(Dictionary<string, Entry> fields, string key, ReadScalar<T> read, Func<T, double>? asNumber, T defaultValue, string? field = null)
        where T : notnull =>
        OptionalField(fields, key, read, asNumber, field) ?? SpecValue<T>.Default(field ?? key, defaultValue);

    private SpecValue<T>? OptionalField<T>(Dictionary<string, Entry> fields, string key, ReadScalar<T> read, Func<T, double>? asNumber, string? field = null)
        where T : notnull =>
        fields.TryGetValue(key, out Entry entry) ? Hyperparameter(field ?? key, entry.Line, entry.Value, read, asNumber) : null;

    /// <param name="asNumber">For numeric fields, a value as the number a distribution's bound is; null where the
    /// values are names, which only lists and choices can give.</param>
    private SpecValue<T> Hyperparameter<T>(string field, int line, YamlNode node, ReadScalar<T> read, Func<T, double>? asNumber)
        where T : notnull
    {
        switch (node)
        {
            case YamlScalarNode scalar:
                return new SpecValue<T> { Field = field, Line = line, Kind = SpecValueKind.One, Values = [read(field, scalar)], Lines = [LineOf(scalar)] };
            case YamlSequenceNode sequence:
                (List<T> values, List<int> lines) = Items(field, sequence, read);
                return new SpecValue<T> { Field = field, Line = line, Kind = SpecValueKind.List, Values = values, Lines = lines };
            case YamlMappingNode mapping:
                return Distribution(field, line, mapping, read, asNumber);
            default:
                throw Error(node, $"{field} must be a value, a list or a distribution, not {Describe(node)}");
        }
    }

    private (List<T> Values, List<int> Lines) Items<T>(string field, YamlSequenceNode sequence, ReadScalar<T> read)
    {
        if (sequence.Children.Count == 0)
        {
            throw Error(sequence, $"{field} is an empty list; give at least one value");
        }
        var values = new List<T>();
        var lines = new List<int>();
        foreach (YamlNode item in sequence.Children)
        {
            if (item is not YamlScalarNode scalar)
            {
                throw Error(item, $"{field}: a list holds plain values, not {Describe(item)}");
            }
            values.Add(read(field, scalar));
            lines.Add(LineOf(scalar));
        }
        return (values, lines);
    }

    private SpecValue<T> Distribution<T>(string field, int line, YamlMappingNode mapping, ReadScalar<T> read, Func<T, double>? asNumber)
        where T : notnull
    {
        string forms = asNumber is null
            ? "{choice: [v1, v2, ...]}"
            : "{uniform: [a, b]}, {log_uniform: [a, b]} or {choice: [v1, v2, ...]}";
        if (mapping.Children.Count != 1
            || mapping.Children.Single() is not { Key: YamlScalarNode { Value: string kind }, Value: YamlNode body }
            || !s_distributions.Contains(kind))
        {
            string found = string.Join(", ", mapping.Children.Keys.Select(k => k is YamlScalarNode s ? s.Value : Describe(k)));
            throw Error(mapping, $"{field} {{{found}}} is not a distribution; a mapping here must be one of: {forms}");
        }
        if (kind == "choice")
        {
            if (body is not YamlSequenceNode choices)
            {
                throw Error(body, $"{field} choice needs a list of values ({{choice: [v1, v2, ...]}}), not {Describe(body)}");
            }
            (List<T> values, List<int> lines) = Items(field, choices, read);
            return new SpecValue<T> { Field = field, Line = line, Kind = SpecValueKind.Choice, Values = values, Lines = lines };
        }
        if (asNumber is null)
        {
            throw Error(mapping, $"{field} {kind}: {field} takes names, not numbers; use a list or {forms}");
        }
        if (body is not YamlSequenceNode { Children: [YamlScalarNode lowNode, YamlScalarNode highNode] })
        {
            throw Error(body, $"{field} {kind} needs two numbers [a, b], not {Describe(body)}");
        }
        // The bounds obey the field's own rules: a rate's lower bound is a rate.
        double low = asNumber(read(field, lowNode));
        double high = asNumber(read(field, highNode));
        string shown = $"{field} {kind} [{lowNode.Value}, {highNode.Value}]";
        if (kind == "log_uniform" && !(low > 0))
        {
            throw Error(lowNode, $"{shown}: the lower bound must be above 0 (a logarithm is taken)");
        }
        if (!(low < high))
        {
            throw Error(lowNode, $"{shown}: the lower bound must be below the upper one");
        }
        SpecValueKind distribution = kind == "uniform" ? SpecValueKind.Uniform : SpecValueKind.LogUniform;
        return new SpecValue<T> { Field = field, Line = line, Kind = distribution, Low = low, High = high };
    }

    // ---- scalar rules ----

    private ReadScalar<string> Name(IReadOnlyList<string> allowed) => (field, scalar) =>
        allowed.Contains(scalar.Value ?? "")
            ? scalar.Value!
            : throw Error(scalar, $"{field} {Shown(scalar)} is not one of: {string.Join(", ", allowed)}");

    private string ModelName(string field, YamlScalarNode scalar)
    {
        // The catalog's own spelling, so that later lookups and the results' params agree whatever case was typed.
        ArchitectureInfo? found = ModelCatalog.All.FirstOrDefault(a => string.Equals(a.Name, scalar.Value?.Trim(), StringComparison.OrdinalIgnoreCase));
        return found?.Name
            ?? throw Error(scalar, $"{field} {Shown(scalar)} is not one of: {string.Join(", ", ModelCatalog.All.Select(a => a.Name))}");
    }

    private string Text(string field, YamlScalarNode scalar) =>
        string.IsNullOrWhiteSpace(scalar.Value) ? throw Error(scalar, $"{field} must not be empty") : scalar.Value.Trim();

    private SpecWeights Weights(string field, YamlScalarNode scalar)
    {
        string text = Text(field, scalar);
        if (text == SpecNames.BuiltinWeights)
        {
            return SpecWeights.Builtin;
        }
        if (text == SpecNames.RandomWeights)
        {
            return new SpecWeights(SpecWeightsKind.Random, text, null);
        }
        // A misspelt "builtin" must not pass for a file name: a weights file has an extension or a folder.
        if (!text.Contains('.', StringComparison.Ordinal) && !text.Contains('/', StringComparison.Ordinal) && !text.Contains('\\', StringComparison.Ordinal))
        {
            throw Error(scalar, $"{field} '{text}' is not one of: builtin, random, or a weights file (.pth, .pt, .safetensors, .onnx)");
        }
        return new SpecWeights(SpecWeightsKind.File, text, Resolve(text));
    }

    private ReadScalar<double> Number(Func<double, bool> allowed, string rule) => (field, scalar) =>
        TryNumber(scalar, out double value) && allowed(value) ? value : throw Error(scalar, $"{field} {Shown(scalar)} {rule}");

    private ReadScalar<int> Integer(int min, int max, string rule) => (field, scalar) =>
        int.TryParse(scalar.Value, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int value) && value >= min && value <= max
            ? value
            : throw Error(scalar, $"{field} {Shown(scalar)} {rule}");

    private long Seed(string field, YamlScalarNode scalar) =>
        long.TryParse(scalar.Value, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long value) && value >= 0
            ? value
            : throw Error(scalar, $"{field} {Shown(scalar)} must be a whole number of 0 or more");

    private static double AsNumber(double value) => value;

    private static double AsNumber(int value) => value;

    private static double AsNumber(long value) => value;

    /// <summary>Finite numbers only: YAML's .inf and .nan, and .NET's "Infinity", are no learning rate.</summary>
    private static bool TryNumber(YamlScalarNode scalar, out double value) =>
        double.TryParse(scalar.Value, NumberStyles.Float, CultureInfo.InvariantCulture, out value) && double.IsFinite(value);

    /// <summary>A value as the message shows it: numbers as written, anything else quoted.</summary>
    private static string Shown(YamlScalarNode scalar) =>
        TryNumber(scalar, out _) ? scalar.Value! : $"'{OneLine(scalar.Value ?? "")}'";

    // ---- the other fields ----

    private string ReadName(Dictionary<string, Entry> top, int rootLine)
    {
        if (!top.TryGetValue("name", out Entry entry))
        {
            throw new SpecException($"{_source} line {rootLine}: name is required (the sweep's name, e.g. name: fashion-transfer)");
        }
        string name = Text("name", Scalar(entry, "name"));
        return name.Contains('\n', StringComparison.Ordinal) ? throw Error(entry.Value, "name must be one line") : name;
    }

    private DatasetSpec ReadDataset(Dictionary<string, Entry> top, int rootLine)
    {
        if (!top.TryGetValue("dataset", out Entry entry))
        {
            throw new SpecException($"{_source} line {rootLine}: dataset is required (dataset: {{train: FOLDER}})");
        }
        if (entry.Value is not YamlMappingNode mapping)
        {
            throw Error(entry.Value, $"dataset must be a mapping (train, and optionally validation and test), not {Describe(entry.Value)}");
        }
        Dictionary<string, Entry> fields = Fields(mapping, "dataset", s_datasetFields);
        if (!fields.TryGetValue("train", out Entry train))
        {
            throw Error(entry.Key, "dataset.train is required (an ImageFolder, or a path<TAB>label manifest)");
        }
        SpecPath trainPath = PathOf(Scalar(train, "dataset.train"), "dataset.train");
        SpecPath? validationPath = null;
        double? fraction = 0.1;
        if (fields.TryGetValue("validation", out Entry validation))
        {
            YamlScalarNode scalar = Scalar(validation, "dataset.validation");
            // A plain number is a fraction of train; anything else (or a quoted "0.1") a folder.
            if (scalar.Style == ScalarStyle.Plain && TryNumber(scalar, out _))
            {
                fraction = Number(v => v is > 0 and < 1, "must be a fraction of train in (0, 1), or a folder")("dataset.validation", scalar);
            }
            else
            {
                validationPath = PathOf(scalar, "dataset.validation");
                fraction = null;
            }
        }
        SpecPath? test = fields.TryGetValue("test", out Entry testEntry) ? PathOf(Scalar(testEntry, "dataset.test"), "dataset.test") : null;
        return new DatasetSpec(trainPath, validationPath, fraction, test, entry.Line);
    }

    private OptimizerSpec ReadOptimizer(Dictionary<string, Entry> top)
    {
        ReadScalar<string> name = Name(SpecNames.Optimizers);
        ReadScalar<double> momentum = Number(v => v is >= 0 and < 1, "must be a number in [0, 1)");
        ReadScalar<double> weightDecay = Number(v => v >= 0, "must be a number of 0 or more");
        if (!top.TryGetValue("optimizer", out Entry entry))
        {
            return new OptimizerSpec(SpecValue<string>.Default("optimizer", "sgd"), SpecValue<double>.Default("optimizer.momentum", 0.9),
                SpecValue<double>.Default("optimizer.weight_decay", 0));
        }
        // {name: sgd, momentum: ...} spells out the optimizer; any other form (adam, [sgd, adam], {choice: [...]}) is
        // its name alone, with the default momentum and weight decay.
        if (entry.Value is YamlMappingNode mapping && !IsDistribution(mapping))
        {
            Dictionary<string, Entry> fields = Fields(mapping, "optimizer", s_optimizerFields);
            return new OptimizerSpec(
                Field(fields, "name", name, null, "sgd", field: "optimizer"),
                Field(fields, "momentum", momentum, AsNumber, 0.9, field: "optimizer.momentum"),
                Field(fields, "weight_decay", weightDecay, AsNumber, 0.0, field: "optimizer.weight_decay"));
        }
        return new OptimizerSpec(Hyperparameter("optimizer", entry.Line, entry.Value, name, null),
            SpecValue<double>.Default("optimizer.momentum", 0.9), SpecValue<double>.Default("optimizer.weight_decay", 0));
    }

    private static bool IsDistribution(YamlMappingNode mapping) =>
        mapping.Children.Count == 1 && mapping.Children.Keys.Single() is YamlScalarNode { Value: string key } && s_distributions.Contains(key);

    private SearchSpec ReadSearch(Dictionary<string, Entry> top)
    {
        ReadScalar<string> method = Name(SpecNames.SearchMethods);
        if (!top.TryGetValue("search", out Entry entry))
        {
            return new SearchSpec("grid", null, null, null, 0);
        }
        if (entry.Value is YamlScalarNode shorthand)
        {
            return new SearchSpec(method("search", shorthand), null, null, null, entry.Line);
        }
        Dictionary<string, Entry> fields = Fields(Mapping(entry, "search", "{method: grid}"), "search", s_searchFields);
        ReadScalar<int> atLeastOne = Integer(1, int.MaxValue, "must be a whole number of at least 1");
        return new SearchSpec(
            PlainOrDefault(fields, "method", "search.method", method) ?? "grid",
            PlainOrDefault(fields, "trials", "search.trials",
                Integer(1, Cluster.Coordinator.Search.SearchPlan.MaxTrials, string.Create(CultureInfo.InvariantCulture, $"must be a whole number from 1 to {Cluster.Coordinator.Search.SearchPlan.MaxTrials:N0} (the most one sweep runs)"))),
            PlainOrDefault(fields, "min_epochs", "search.min_epochs", atLeastOne),
            PlainOrDefault(fields, "reduction", "search.reduction", Number(v => v > 1, "must be a number above 1")),
            entry.Line);
    }

    private MetricSpec ReadMetric(Dictionary<string, Entry> top)
    {
        ReadScalar<string> name = Name(SpecNames.MetricNames);
        if (!top.TryGetValue("metric", out Entry entry))
        {
            return new MetricSpec("val_accuracy", "max", 0);
        }
        if (entry.Value is YamlScalarNode shorthand)
        {
            string metric = name("metric", shorthand);
            return new MetricSpec(metric, BetterWay(metric), entry.Line);
        }
        Dictionary<string, Entry> fields = Fields(Mapping(entry, "metric", "{name: val_accuracy, mode: max}"), "metric", s_metricFields);
        string chosen = PlainOrDefault(fields, "name", "metric.name", name) ?? "val_accuracy";
        if (!fields.TryGetValue("mode", out Entry modeEntry))
        {
            return new MetricSpec(chosen, BetterWay(chosen), entry.Line);
        }
        YamlScalarNode modeNode = Scalar(modeEntry, "metric.mode");
        string mode = Name(SpecNames.MetricModes)("metric.mode", modeNode);
        // The search would otherwise keep the worst trials, silently.
        return mode == BetterWay(chosen)
            ? new MetricSpec(chosen, mode, entry.Line)
            : throw Error(modeNode, $"metric.mode '{mode}' with metric {chosen}: {chosen} is better {(BetterWay(chosen) == "max" ? "higher" : "lower")}, so mode must be {BetterWay(chosen)}");
    }

    private static string BetterWay(string metric) => metric == "val_loss" ? "min" : "max";

    private BudgetSpec ReadBudget(Dictionary<string, Entry> top)
    {
        if (!top.TryGetValue("budget", out Entry entry))
        {
            return BudgetSpec.None;
        }
        Dictionary<string, Entry> fields = Fields(Mapping(entry, "budget", "{storage: 20GiB, wall_time: 2h}"), "budget", s_budgetFields);
        return new BudgetSpec(
            fields.TryGetValue("storage", out Entry storage) ? StorageBytes(Scalar(storage, "budget.storage")) : null,
            fields.TryGetValue("wall_time", out Entry wallTime) ? WallTime(Scalar(wallTime, "budget.wall_time")) : null,
            entry.Line)
        {
            Activations = fields.TryGetValue("activations", out Entry activations) ? ActivationDtype(Scalar(activations, "budget.activations")) : "fp32",
        };
    }

    private AutoSpec ReadAuto(Dictionary<string, Entry> top)
    {
        if (!top.TryGetValue("auto", out Entry entry))
        {
            return AutoSpec.Default;
        }
        Dictionary<string, Entry> fields = Fields(Mapping(entry, "auto", "{similar_above: 0.88, big_from: 1200}"), "auto", s_autoFields);
        ReadScalar<double> score = Number(v => v is >= 0 and <= 1, "must be a similarity score from 0 to 1");
        return new AutoSpec(
            PlainOrDefault(fields, "similar_above", "auto.similar_above", score) ?? AutoSpec.DefaultSimilarAbove,
            PlainOrDefault(fields, "big_from", "auto.big_from", Integer(1, int.MaxValue, "must be a whole number of training images per class, at least 1")) ?? AutoSpec.DefaultBigFrom,
            PlainOrDefault(fields, "similarity", "auto.similarity", score),
            entry.Line);
    }

    private string ActivationDtype(YamlScalarNode scalar) =>
        s_activationDtypes.Contains(scalar.Value, StringComparer.Ordinal)
            ? scalar.Value!
            : throw Error(scalar, $"budget.activations {Shown(scalar)} is not one of: {string.Join(", ", s_activationDtypes)} (how stored activations are kept: auto halves a set that fits the storage budget only in bf16)");

    private long StorageBytes(YamlScalarNode scalar)
    {
        Match match = StorageSize().Match(scalar.Value ?? "");
        if (match.Success
            && double.TryParse(match.Groups["number"].Value, NumberStyles.Float, CultureInfo.InvariantCulture, out double number)
            && s_storageUnits.TryGetValue(match.Groups["unit"].Value, out long unit)
            && number * unit is > 0 and < long.MaxValue)
        {
            return (long)(number * unit);
        }
        throw Error(scalar, $"budget.storage {Shown(scalar)} must be a positive size with a unit: B, KB, MB, GB, TB, KiB, MiB, GiB or TiB (e.g. 20GiB, 500MB)");
    }

    [GeneratedRegex(@"^\s*(?<number>\d+(\.\d+)?)\s*(?<unit>[A-Za-z]+)\s*$")]
    private static partial Regex StorageSize();

    private TimeSpan WallTime(YamlScalarNode scalar)
    {
        string text = (scalar.Value ?? "").Replace(" ", "", StringComparison.Ordinal);
        MatchCollection parts = DurationPart().Matches(text);
        TimeSpan total = TimeSpan.Zero;
        int covered = 0;
        foreach (Match part in parts)
        {
            double number = double.Parse(part.Groups["number"].Value, CultureInfo.InvariantCulture);
            total += part.Groups["unit"].Value switch
            {
                "d" => TimeSpan.FromDays(number),
                "h" => TimeSpan.FromHours(number),
                "m" => TimeSpan.FromMinutes(number),
                _ => TimeSpan.FromSeconds(number),
            };
            covered += part.Length;
        }
        return parts.Count > 0 && covered == text.Length && total > TimeSpan.Zero
            ? total
            : throw Error(scalar, $"budget.wall_time {Shown(scalar)} must be a positive duration in d, h, m or s (e.g. 2h, 30m, 90s, 1h30m)");
    }

    [GeneratedRegex(@"\G(?<number>\d+(\.\d+)?)(?<unit>[dhms])")]
    private static partial Regex DurationPart();

    // ---- checks across fields ----

    /// <summary>Only built-in models have built-in weights; every other architecture starts from random or a file.</summary>
    private void CheckWeights(SweepSpec spec)
    {
        if (!spec.Weights.Values.Contains(SpecWeights.Builtin))
        {
            return;
        }
        for (int i = 0; i < spec.Model.Values.Count; i++)
        {
            string model = spec.Model.Values[i];
            if (!BuiltInModels.Names.Contains(model))
            {
                int line = spec.Weights.Line > 0 ? spec.Weights.Line : spec.Model.Lines[i];
                throw new SpecException(
                    $"{_source} line {line}: weights builtin: model {model} has none (built-in weights: {string.Join(", ", BuiltInModels.Names)}); " +
                    $"give weights: random or a weights file");
            }
        }
    }

    /// <summary>
    /// Every cutoff must be a layer of every model the spec names (a sweep crosses them). fine-tune-top also needs a
    /// layer after its cutoff to train: without a cutoff it takes layer3 on ResNets (the last stage and the pool stay
    /// trainable, as in the reference material), and other families must name one; a cutoff at the model's last step
    /// would leave nothing of the backbone to train.
    /// </summary>
    private void CheckCutoffs(SweepSpec spec)
    {
        int fineTuneTop = spec.Strategy.Values.ToList().IndexOf(SpecNames.FineTuneTop);
        if (spec.Cutoff is null)
        {
            if (fineTuneTop < 0)
            {
                return;
            }
            foreach (string model in spec.Model.Values)
            {
                ArchitectureInfo architecture = ModelCatalog.Find(model);
                if (architecture.Family != "resnet")
                {
                    bool byDefault = spec.Strategy.Line == 0;
                    int line = byDefault ? spec.Model.Line : spec.Strategy.Lines[fineTuneTop];
                    throw new SpecException(
                        $"{_source} line {line}: strategy fine-tune-top{(byDefault ? " (the default)" : "")} needs a cutoff for model {model}: " +
                        $"give cutoff, a layer of `coordinator models layers {model}` (only ResNets default to {SweepSpec.ResNetFineTuneTopCutoff})");
                }
            }
            return;
        }
        foreach (string model in spec.Model.Values)
        {
            ModelLayers layers = ModelLayers.For(ModelCatalog.Find(model));
            for (int i = 0; i < spec.Cutoff.Values.Count; i++)
            {
                string cutoff = spec.Cutoff.Values[i];
                int line = spec.Cutoff.Lines[i];
                if (!layers.TryResolve(cutoff, out int step))
                {
                    const int shownAtMost = 20;
                    string shown = string.Join(", ", layers.Names.Take(shownAtMost));
                    string more = layers.Names.Count > shownAtMost
                        ? $", ... ({layers.Names.Count - shownAtMost} more: coordinator models layers {model})"
                        : "";
                    throw new SpecException($"{_source} line {line}: cutoff '{cutoff}' is not a layer of {model}; allowed: {shown}{more}");
                }
                if (fineTuneTop >= 0 && layers.IsLastStep(step))
                {
                    throw new SpecException(
                        $"{_source} line {line}: cutoff '{cutoff}' is the last layer of {model}, so fine-tune-top would train nothing " +
                        $"of it; give an earlier cutoff (e.g. {(ModelCatalog.Find(model).Family == "resnet" ? SweepSpec.ResNetFineTuneTopCutoff : "a block's pool")}), or strategy feature-extractor");
                }
            }
        }
    }

    /// <summary>
    /// `auto` only with `strategy: auto`; auto compares the data with what pretrained weights learnt on, so random
    /// weights need the similarity given; and auto chooses the cutoff itself, so a spec whose every strategy is auto
    /// has no cutoff to give.
    /// </summary>
    private void CheckAuto(SweepSpec spec)
    {
        int auto = spec.Strategy.Values.ToList().IndexOf(SpecNames.Auto);
        if (auto < 0)
        {
            if (spec.Auto.Line > 0)
            {
                throw new SpecException($"{_source} line {spec.Auto.Line}: auto sets the thresholds of strategy auto, which no strategy of the spec is; remove it, or add auto to strategy");
            }
            return;
        }
        int strategyLine = spec.Strategy.Lines[auto];
        if (spec.Auto.Similarity is null && spec.Weights.Values.Any(w => w.Kind == SpecWeightsKind.Random))
        {
            throw new SpecException(
                $"{_source} line {spec.Weights.Line}: weights random with strategy auto (line {strategyLine}): auto compares the data with the domain the weights " +
                "were pretrained on, and random weights have none; give weights builtin or a file, or auto.similarity");
        }
        if (spec.Cutoff is not null && spec.Strategy.Values.All(s => s == SpecNames.Auto))
        {
            throw new SpecException(
                $"{_source} line {spec.Cutoff.Line}: cutoff with strategy auto (line {strategyLine}): auto chooses the cutoff from the decision table; remove cutoff, or name a strategy");
        }
    }

    // ---- helpers ----

    /// <summary>A field that is not a hyperparameter: one plain value, or its default when absent.</summary>
    private T Plain<T>(Dictionary<string, Entry> fields, string key, ReadScalar<T> read, T defaultValue)
        where T : struct =>
        fields.TryGetValue(key, out Entry entry) ? read(key, Scalar(entry, key)) : defaultValue;

    private T? PlainOrDefault<T>(Dictionary<string, Entry> fields, string key, string field, ReadScalar<T> read)
        where T : struct =>
        fields.TryGetValue(key, out Entry entry) ? read(field, Scalar(entry, field)) : null;

    private string? PlainOrDefault(Dictionary<string, Entry> fields, string key, string field, ReadScalar<string> read) =>
        fields.TryGetValue(key, out Entry entry) ? read(field, Scalar(entry, field)) : null;

    private YamlScalarNode Scalar(Entry entry, string field) =>
        entry.Value as YamlScalarNode ?? throw Error(entry.Value, $"{field} takes one value, not {Describe(entry.Value)}");

    private YamlMappingNode Mapping(Entry entry, string field, string example) =>
        entry.Value as YamlMappingNode ?? throw Error(entry.Value, $"{field} must be a mapping such as {example}, not {Describe(entry.Value)}");

    private SpecPath PathOf(YamlScalarNode scalar, string field)
    {
        string text = Text(field, scalar);
        return new SpecPath(text, Resolve(text));
    }

    /// <summary>Relative paths are the spec file's: a spec and its data move together, wherever the CLI runs from.</summary>
    private string Resolve(string path) => Path.GetFullPath(path, _baseDirectory);

    private static bool IsNull(YamlNode node) =>
        node is YamlScalarNode { Style: ScalarStyle.Plain or ScalarStyle.Any } scalar
        && scalar.Value is null or "" or "~" or "null" or "Null" or "NULL";

    private static string Describe(YamlNode node) => node switch
    {
        YamlMappingNode => "a mapping",
        YamlSequenceNode => "a list",
        YamlScalarNode s => $"'{OneLine(s.Value ?? "")}'",
        _ => node.NodeType.ToString(),
    };

    private static string OneLine(string text) =>
        string.Join(' ', text.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));

    private static int LineOf(YamlNode node) => (int)node.Start.Line;

    private SpecException Error(YamlNode node, string message) => new($"{_source} line {LineOf(node)}: {message}");
}
