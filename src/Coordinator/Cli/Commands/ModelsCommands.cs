using System.ComponentModel;
using System.Globalization;
using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Kernels;
using Cluster.GpuWorker.Models;
using TorchSharp;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

/// <summary>`coordinator models list`: every architecture with its input, preprocessing, size and default tap.</summary>
public sealed class ModelsListCommand : Command<GlobalSettings>
{
    public override int Execute(CommandContext context, GlobalSettings settings, CancellationToken cancellationToken)
    {
        var rows = ModelCatalog.All.Select(a => new
        {
            name = a.Name,
            family = a.Family,
            inputSize = a.InputSize,
            preprocessing = a.Preprocessing.Name,
            parameters = a.ParameterCount,
            defaultTap = a.DefaultTap,
            weights = a.WeightsSource,
            description = a.Description,
        }).ToList();
        CliOutput.Write(settings, rows, () =>
        {
            var table = new Table().Border(TableBorder.Rounded)
                .AddColumns("architecture", "input", "preprocessing", "parameters", "default tap", "weights");
            foreach (var r in rows)
            {
                table.AddRow(r.name, $"{r.inputSize}x{r.inputSize}", r.preprocessing, Millions(r.parameters), r.defaultTap, r.weights);
            }
            AnsiConsole.Write(table);
            AnsiConsole.MarkupLine("[grey]`coordinator models layers ARCH` lists an architecture's taps with their output shapes.[/]");
        });
        return 0;
    }

    internal static string Millions(long count) => (count / 1e6).ToString("F1", CultureInfo.InvariantCulture) + "M";
}

public sealed class ModelsLayersSettings : GlobalSettings
{
    [CommandArgument(0, "<ARCH>")]
    [Description("An architecture from `coordinator models list`.")]
    public string Architecture { get; init; } = "";
}

/// <summary>
/// `coordinator models layers ARCH`: every tap (step and alias) with its output shape at the native input size
/// and how many parameters a freeze cutoff there freezes.
/// </summary>
public sealed class ModelsLayersCommand : Command<ModelsLayersSettings>
{
    public override int Execute(CommandContext context, ModelsLayersSettings settings, CancellationToken cancellationToken)
    {
        ArchitectureInfo info = ModelCatalog.Find(settings.Architecture);
        using Backbone model = info.Build();
        long total = Backbone.CountParameters(model);
        var aliasesByStep = model.Aliases.GroupBy(a => a.Value).ToDictionary(g => g.Key, g => g.Select(a => a.Key).Order(StringComparer.Ordinal).ToList());
        long frozen = 0;
        var rows = new List<LayerRow>();
        foreach ((BackboneStep step, long[] shape) in model.TraceShapes(info.InputSize))
        {
            long own = step.Module is null ? 0 : Backbone.CountParameters(step.Module);
            frozen += own;
            rows.Add(new LayerRow(step.Name, aliasesByStep.GetValueOrDefault(step.Name, []), step.Module?.GetType().Name ?? "function",
                shape, own, frozen, step.IsClassifier));
        }
        string defaultStep = model.Steps[model.ResolveTap(info.DefaultTap)].Name;
        CliOutput.Write(settings, new
        {
            architecture = info.Name,
            inputSize = info.InputSize,
            parameters = total,
            defaultTap = info.DefaultTap,
            taps = rows.Select(r => new
            {
                name = r.Name,
                aliases = r.Aliases,
                module = r.Module,
                outputShape = r.Shape,
                parameters = r.Parameters,
                frozenAtCutoff = r.FrozenAtCutoff,
                classifier = r.IsClassifier,
                isDefault = r.Name == defaultStep,
            }),
        }, () =>
        {
            var table = new Table().Border(TableBorder.Rounded)
                .Title($"{info.Name}: {info.InputSize}x{info.InputSize} input, {ModelsListCommand.Millions(total)} parameters")
                .AddColumns("tap", "also known as", "module", "output shape", "params", "a cutoff here freezes");
            foreach (LayerRow r in rows)
            {
                string name = r.Name == defaultStep ? $"[bold]{Markup.Escape(r.Name)}[/] (default)" : Markup.Escape(r.Name);
                if (r.IsClassifier)
                {
                    name = $"[grey]{name}[/]";
                }
                table.AddRow(
                    new Markup(name),
                    new Text(string.Join(", ", r.Aliases)),
                    new Text(r.Module),
                    new Text("[" + string.Join(", ", r.Shape) + "]"),
                    new Text(r.Parameters.ToString("N0", CultureInfo.InvariantCulture)),
                    new Text($"{r.FrozenAtCutoff.ToString("N0", CultureInfo.InvariantCulture)} ({100.0 * r.FrozenAtCutoff / total:F1}%)"));
            }
            AnsiConsole.Write(table);
        });
        return 0;
    }

    private sealed record LayerRow(
        string Name, List<string> Aliases, string Module, long[] Shape, long Parameters, long FrozenAtCutoff, bool IsClassifier);
}

public sealed class ModelsBenchSettings : GlobalSettings
{
    [CommandArgument(0, "<ARCH>")]
    [Description("An architecture from `coordinator models list`.")]
    public string Architecture { get; init; } = "";

    [CommandOption("--layer <TAP>")]
    [Description("Run to this tap (default: the architecture's default tap).")]
    public string? Layer { get; init; }

    [CommandOption("--precision <PRECISION>")]
    [DefaultValue("fp32")]
    public string Precision { get; init; } = "fp32";

    [CommandOption("--batch-size <N>")]
    [DefaultValue(32)]
    public int BatchSize { get; init; }

    [CommandOption("--seconds <S>")]
    [Description("Measure for at least this long (after one warm-up batch).")]
    [DefaultValue(10)]
    public int Seconds { get; init; }

    [CommandOption("--lanes <N>")]
    [Description("Batches computed at once, each on its own cores, as a worker does (default: the worker's default, 2 up to 8 cores).")]
    [DefaultValue(0)]
    public int Lanes { get; init; }

    [CommandOption("--threads <N>")]
    [Description("libtorch threads per lane (default: the cores shared out among the lanes).")]
    [DefaultValue(0)]
    public int Threads { get; init; }

    [CommandOption("--no-fold")]
    [Description("Run batch norms as they are instead of folded into the convolutions (ResNets), to measure what folding gains.")]
    public bool NoFold { get; init; }
}

/// <summary>
/// `coordinator models bench ARCH`: the forward-only rate on random input at the native size, the compute limit
/// that end-to-end extraction is measured against (bench/extract_bench.sh).
/// </summary>
public sealed class ModelsBenchCommand : Command<ModelsBenchSettings>
{
    public override int Execute(CommandContext context, ModelsBenchSettings settings, CancellationToken cancellationToken)
    {
        if (settings.Precision is not ("fp32" or "bf16"))
        {
            throw new Cluster.Hosting.ClusterConfigurationException($"--precision '{settings.Precision}' is not one of: fp32, bf16.");
        }
        ArchitectureInfo info = ModelCatalog.Find(settings.Architecture);
        // The lanes a CPU worker runs forward passes on (FeatureExtractor), each lane one batch at a time, with one
        // dispose scope per batch: every tensor a forward pass makes is freed when it ends.
        using var lanes = new ForwardLanes(LaneLayout.For(TorchDevice.Cpu, settings.Lanes, settings.Threads));
        // Prepared as a worker prepares it (InferenceModel: precision, layout, folded batch norms, checked kernels).
        CliContext cli = CliContext.Create(settings);
        KernelVerifier verifier = cli.KernelVerifier();
        string tap = settings.Layer ?? info.DefaultTap;
        using InferenceModel model = InferenceModel.Prepare(info.Build(), settings.Precision, TorchSharp.torch.CPU, verifier,
            new KernelPlan(info.InputSize, [settings.BatchSize], lanes.Layout.ThreadsPerLane, tap), fold: !settings.NoFold);
        using TorchSharp.torch.Tensor random = TorchSharp.torch.randn(settings.BatchSize, 3, info.InputSize, info.InputSize);
        using TorchSharp.torch.Tensor input = model.PrepareInput(random);
        void Forward()
        {
            using var scope = TorchSharp.torch.NewDisposeScope();
            using var noGrad = TorchSharp.torch.no_grad();
            model.ForwardTo(input, tap);
        }

        int count = lanes.Layout.Lanes;
        Task.WaitAll(Enumerable.Range(0, count).Select(_ => lanes.RunAsync(Forward)).ToArray(), cancellationToken);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        long[] perLane = Task.WhenAll(Enumerable.Range(0, count).Select(_ => lanes.RunAsync(() =>
        {
            long images = 0;
            while (clock.Elapsed.TotalSeconds < settings.Seconds || images < 4L * settings.BatchSize)
            {
                cancellationToken.ThrowIfCancellationRequested();
                Forward();
                images += settings.BatchSize;
            }
            return images;
        }))).GetAwaiter().GetResult();
        long images = perLane.Sum();
        double seconds = clock.Elapsed.TotalSeconds;
        CliOutput.Write(settings, new
        {
            tool = "cluster",
            mode = "forward-only",
            architecture = info.Name,
            layer = tap,
            precision = settings.Precision,
            channelsLast = model.IsChannelsLast,
            batchSize = settings.BatchSize,
            batchNormsFolded = model.Folded is not null,
            lanes = lanes.Layout.Lanes,
            threadsPerLane = lanes.Layout.ThreadsPerLane,
            images,
            seconds = Math.Round(seconds, 3),
            imagesPerSecond = Math.Round(images / seconds, 2),
            kernels = new
            {
                cpu = verifier.Cpu.Description,
                configurations = model.Routes.Count,
                rerouted = model.Routes.Where(r => r.Value != ConvolutionPath.Native)
                    .Select(r => new { config = r.Key.Key, path = r.Value.ToString().ToLowerInvariant() }).ToList(),
            },
        }, () =>
        {
            AnsiConsole.MarkupLineInterpolated(
                $"{info.Name} to {tap}, {settings.Precision}, batch {settings.BatchSize}, {lanes.Layout}: {images / seconds:F1} images/s ({images} images in {seconds:F1} s)");
            int rerouted = model.Routes.Count(r => r.Value != ConvolutionPath.Native);
            AnsiConsole.MarkupLineInterpolated(
                $"[grey]kernels: {model.Routes.Count} convolution configurations checked on {verifier.Cpu.Description}; {rerouted} rerouted[/]");
        });
        return 0;
    }
}
