using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using Cluster.Contracts;
using Cluster.Coordinator.Orchestration;
using Cluster.Coordinator.Planning;
using Cluster.GpuWorker.Extraction;
using Cluster.GpuWorker.Models;
using Cluster.Hosting;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Datasets;
using Cluster.Storage.Files;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Spectre.Console;
using Spectre.Console.Cli;
using ValidationResult = Spectre.Console.ValidationResult;

namespace Cluster.Coordinator.Cli.Commands;

public sealed class ExtractSettings : GlobalSettings
{
    [CommandOption("--dataset <DIR>")]
    [Description("An image folder: one subfolder per class (ImageFolder layout).")]
    public string Dataset { get; init; } = "";

    [CommandOption("--manifest <FILE>")]
    [Description("Optional: a path<TAB>label list of the dataset's images (relative to --dataset) instead of scanning subfolders.")]
    public string? Manifest { get; init; }

    [CommandOption("--model <ARCH>")]
    [Description("An architecture from `coordinator models list`.")]
    [DefaultValue("resnet18-imagenet")]
    public string Model { get; init; } = "resnet18-imagenet";

    [CommandOption("--layer <TAP>")]
    [Description("Where to take the features (`coordinator models layers ARCH`); default: the architecture's default tap.")]
    public string? Layer { get; init; }

    [CommandOption("--weights <FILE>")]
    [Description("Weights file (safetensors, PyTorch .pt/.pth, TorchSharp); default: the model's built-in weights, else seeded random ones.")]
    public string? Weights { get; init; }

    [CommandOption("--pool <POOL>")]
    [Description("avg (global average over space) or none.")]
    [DefaultValue("avg")]
    public string Pool { get; init; } = "avg";

    [CommandOption("--precision <PRECISION>")]
    [Description("fp32 (exact) or bf16 (about twice as fast on CPUs with AMX/AVX-512, channels-last).")]
    [DefaultValue("fp32")]
    public string Precision { get; init; } = "fp32";

    [CommandOption("--input-size <N>")]
    [Description("Square input side in pixels (16..1024), e.g. 64 for small images; default: the model's native size. The mean image or resize adapts.")]
    public int? InputSize { get; init; }

    [CommandOption("--storage-dtype <DTYPE>")]
    [Description("How the features are stored: fp32, or bf16 / fp16 (half the size on disk and in memory for training).")]
    [DefaultValue("fp32")]
    public string StorageDtype { get; init; } = "fp32";

    [CommandOption("--shard-size <N>")]
    [Description("Images per shard (one job per shard).")]
    [DefaultValue(1000)]
    public int ShardSize { get; init; }

    [CommandOption("--batch-size <N>")]
    [DefaultValue(32)]
    public int BatchSize { get; init; }

    [CommandOption("--timeout <SECONDS>")]
    [Description("Give up waiting after this long (0: wait until done).")]
    [DefaultValue(0)]
    public int TimeoutSeconds { get; init; }

    public override ValidationResult Validate()
    {
        if (string.IsNullOrWhiteSpace(Dataset))
        {
            return ValidationResult.Error("--dataset DIR is required.");
        }
        if (Pool is not ("avg" or "none"))
        {
            return ValidationResult.Error($"--pool '{Pool}' is not one of: avg, none.");
        }
        if (Precision is not ("fp32" or "bf16"))
        {
            return ValidationResult.Error($"--precision '{Precision}' is not one of: fp32, bf16.");
        }
        if (InputSize is < 16 or > 1024)
        {
            return ValidationResult.Error($"--input-size {InputSize} must be within 16..1024.");
        }
        if (!FeatureStorageDtype.TryParse(StorageDtype, out _))
        {
            return ValidationResult.Error($"--storage-dtype '{StorageDtype}' is not one of: {string.Join(", ", FeatureStorageDtype.All.Select(d => d.Name))}.");
        }
        if (ShardSize is < 1 or > 1_000_000)
        {
            return ValidationResult.Error($"--shard-size {ShardSize} must be within 1..1000000.");
        }
        if (BatchSize is < 1 or > 4096)
        {
            return ValidationResult.Error($"--batch-size {BatchSize} must be within 1..4096.");
        }
        return TimeoutSeconds < 0 ? ValidationResult.Error("--timeout must not be negative.") : base.Validate();
    }
}

/// <summary>
/// `coordinator extract`: a dataset's features at one tap, as shards extracted by the workers, reusing any
/// complete or partial feature set with the same frozen-prefix key.
/// </summary>
public sealed class ExtractCommand : AsyncCommand<ExtractSettings>
{
    // One small query on the shards table; often enough that the end of a run is noticed within a fifth of a second.
    private static readonly TimeSpan ProgressPollInterval = TimeSpan.FromMilliseconds(200);

    public override async Task<int> ExecuteAsync(CommandContext context, ExtractSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        if (!Directory.Exists(settings.Dataset))
        {
            throw new ClusterConfigurationException($"--dataset '{settings.Dataset}' is not a folder.");
        }
        ArchitectureInfo architecture = ModelCatalog.Find(settings.Model);
        // The name of the preprocessing at the requested size goes into the key: 64 and 224 are different sets.
        Preprocessing preprocessing = FeatureExtractor.PreprocessingFor(architecture, settings.InputSize);
        FeatureStorageDtype storage = FeatureStorageDtype.Parse(settings.StorageDtype);
        string layer;
        string? weightsSha256;
        // One model, built here only to check the request before anything is sent: the layer, the shard size and
        // the --weights file are wrong now, with a clear message, rather than on every worker later.
        using (Backbone model = architecture.Build())
        {
            layer = CanonicalLayer(model, preprocessing.InputSize, settings.Layer ?? architecture.DefaultTap, settings);
            weightsSha256 = await CheckWeightsAsync(settings, architecture, model, cancellationToken);
        }
        await cli.RequireBrokerAsync(cancellationToken);
        await cli.RequireDatabaseAsync(cancellationToken);
        var store = new FileStore(cli.Settings.StorageRoot);
        (string weightsHash, string? weightsPath) = await StageWeightsAsync(settings, architecture, weightsSha256, store, cancellationToken);

        DatasetManifest dataset = await ScanAsync(settings, store, cancellationToken);
        var request = new ExtractionRequest(dataset, architecture.Name, layer, settings.Pool, preprocessing.Name,
            settings.Precision, weightsHash, weightsPath, settings.ShardSize, settings.BatchSize, settings.InputSize, storage.Name);
        var planner = new FeatureSetPlanner(cli.Database, store);
        var clock = Stopwatch.StartNew();
        string key = request.Key.Value;
        if (await FeatureSetRunner.SetAsync(cli, key, cancellationToken) is { Status: FeatureSetStatus.Complete } cached)
        {
            await ReportAsync(settings, cli, preprocessing, request, cached, cached: true, clock.Elapsed, cancellationToken);
            return 0;
        }

        using IHost host = cli.BuildHost(coordinatorService: false);
        await host.StartAsync(cancellationToken);
        try
        {
            // The service plans the set, sends its missing shards and completes it: closing this terminal stops the
            // watching, not the extraction.
            var extraction = Stopwatch.StartNew();
            ISendEndpoint coordinator = await host.Services.GetRequiredService<ISendEndpointProvider>().GetSendEndpoint(new Uri($"queue:{QueueNames.Coordinator}"));
            await coordinator.Send(request.ToMessage(), cancellationToken);
            FeatureSetRecord planned = await WaitForAsync(cli, key, s => true, "planned", cancellationToken);
            FeatureSetProgress progress = await WaitAsync(settings, planner, planned, dataset.Entries.Count, cancellationToken);
            if (progress.ShardsFailed > 0)
            {
                foreach ((int shard, string reason) in progress.Failures.Take(10))
                {
                    Console.Error.WriteLine($"coordinator: shard {shard} of {key} failed: {reason}");
                }
                return 1;
            }
            if (progress.ShardsComplete < planned.ShardCount)
            {
                Console.Error.WriteLine($"coordinator: error: {progress.ShardsComplete} of {planned.ShardCount} shards done after {settings.TimeoutSeconds} s; "
                    + $"the coordinator service goes on with it (`coordinator features list` shows it; the same command again waits for it).");
                return 1;
            }
            FeatureSetRecord set = await WaitForAsync(cli, key, s => s.Status == FeatureSetStatus.Complete, "completed", cancellationToken);
            await ReportAsync(settings, cli, preprocessing, request, set, cached: false, extraction.Elapsed, cancellationToken);
            return 0;
        }
        finally
        {
            await host.StopAsync(CancellationToken.None);
        }
    }

    /// <summary>The set's row once the service has <paramref name="what"/> it (a minute at most: the service answers in milliseconds).</summary>
    private static async Task<FeatureSetRecord> WaitForAsync(CliContext cli, string key, Func<FeatureSetRecord, bool> condition, string what, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            if (await FeatureSetRunner.SetAsync(cli, key, ct) is FeatureSetRecord set && condition(set))
            {
                return set;
            }
            if (clock.Elapsed > TimeSpan.FromSeconds(60))
            {
                throw new ClusterConfigurationException($"feature set {key} was not {what} by the coordinator service within 60 s: is `coordinator serve` running?");
            }
            await Task.Delay(ProgressPollInterval, ct);
        }
    }

    private static string CanonicalLayer(Backbone model, int inputSize, string tap, ExtractSettings settings)
    {
        int step = model.ResolveTap(tap);
        long[] shape;
        try
        {
            shape = model.TraceShapes(inputSize)[step].Shape;
        }
        catch (Exception e) when (settings.InputSize is not null && e is InvalidOperationException or System.Runtime.InteropServices.ExternalException)
        {
            // A network's strided layers shrink small inputs to nothing: say which size, not libtorch's shape arithmetic.
            throw new ClusterConfigurationException(
                $"--input-size {inputSize} is too small for {settings.Model}: {e.Message.Split('\n')[0]}", e);
        }
        long floats = settings.Pool == "avg" ? shape[0] : shape.Aggregate(1L, (a, b) => a * b);
        long shardBytes = floats * 4 * settings.ShardSize;
        const long MaxShardBytes = 1L << 30;
        if (shardBytes > MaxShardBytes)
        {
            throw new ClusterConfigurationException(
                $"--layer {tap} with --pool {settings.Pool} gives {floats * 4 / 1e6:F1} MB of features per image; --shard-size {settings.ShardSize} "
                + $"would hold {shardBytes / 1e9:F1} GB per shard (limit 1 GB): use --shard-size {Math.Max(1, MaxShardBytes / (floats * 4))} or less, or --pool avg.");
        }
        return model.Steps[step].Name;
    }

    /// <summary>
    /// Checks, once and here, that a --weights file loads strictly into the architecture, so a wrong file fails now
    /// with the diff; returns its sha256 (lowercase hex), or null without --weights.
    /// </summary>
    private static async Task<string?> CheckWeightsAsync(
        ExtractSettings settings, ArchitectureInfo architecture, Backbone model, CancellationToken cancellationToken)
    {
        if (settings.Weights is null)
        {
            return null;
        }
        try
        {
            return await WeightsStaging.CheckAsync(settings.Weights, architecture, model, cancellationToken);
        }
        catch (WeightsCheckException e)
        {
            throw new ClusterConfigurationException($"--weights '{settings.Weights}' {e.Message}.", e);
        }
    }

    /// <summary>
    /// Puts a checked --weights file on the shared storage (under its hash) so that every worker reads the same
    /// bytes; without --weights, names the architecture's built-in or seeded random weights.
    /// </summary>
    private static async Task<(string Hash, string? Path)> StageWeightsAsync(
        ExtractSettings settings, ArchitectureInfo architecture, string? sha256, FileStore store, CancellationToken cancellationToken)
    {
        if (settings.Weights is null || sha256 is null)
        {
            return architecture.WeightsSource.StartsWith("built in", StringComparison.Ordinal)
                ? ($"builtin:{architecture.Name}", null)
                : ("random:0", null);
        }
        return (WeightsStaging.HashName(sha256), await WeightsStaging.StageAsync(store, settings.Weights, sha256, cancellationToken));
    }

    private static async Task<DatasetManifest> ScanAsync(ExtractSettings settings, FileStore store, CancellationToken cancellationToken)
    {
        DatasetManifest dataset;
        try
        {
            dataset = settings.Manifest is null
                ? await DatasetScanner.ScanFolderAsync(settings.Dataset, null, cancellationToken)
                : await DatasetScanner.ScanManifestAsync(settings.Manifest, settings.Dataset, null, cancellationToken);
        }
        catch (DatasetInputException e)
        {
            throw new ClusterConfigurationException(e.Message, e);
        }
        if (dataset.Entries.Count == 0)
        {
            throw new ClusterConfigurationException($"--dataset '{settings.Dataset}' holds no images (expected one subfolder per class with image files).");
        }
        await dataset.SaveAsync(store, cancellationToken);
        return dataset;
    }

    private static async Task<FeatureSetProgress> WaitAsync(
        ExtractSettings settings, FeatureSetPlanner planner, FeatureSetRecord set, int images, CancellationToken cancellationToken)
    {
        string key = set.Key;
        int shards = set.ShardCount;
        var deadline = settings.TimeoutSeconds > 0 ? TimeSpan.FromSeconds(settings.TimeoutSeconds) : Timeout.InfiniteTimeSpan;
        var clock = Stopwatch.StartNew();
        FeatureSetProgress progress = await planner.ProgressAsync(key, cancellationToken);
        int startImages = progress.ImagesDone + progress.ImagesSkipped;

        bool Finished(FeatureSetProgress p) =>
            p.ShardsComplete + p.ShardsFailed >= shards || (deadline != Timeout.InfiniteTimeSpan && clock.Elapsed > deadline);

        if (settings.Format == OutputFormat.Json || Console.IsOutputRedirected)
        {
            while (!Finished(progress))
            {
                await Task.Delay(ProgressPollInterval, cancellationToken);
                progress = await planner.ProgressAsync(key, cancellationToken);
            }
            return progress;
        }
        await AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .StartAsync(async ctx =>
            {
                ProgressTask bar = ctx.AddTask($"[bold]{Markup.Escape(key)}[/]", maxValue: images);
                while (true)
                {
                    int done = progress.ImagesDone + progress.ImagesSkipped;
                    double rate = (done - startImages) / Math.Max(clock.Elapsed.TotalSeconds, 1e-3);
                    bar.Value = done;
                    bar.Description = $"{Markup.Escape(key)}  shards {progress.ShardsComplete}/{shards}  skipped {progress.ImagesSkipped}  {rate:F1} images/s";
                    if (Finished(progress))
                    {
                        break;
                    }
                    await Task.Delay(ProgressPollInterval, cancellationToken);
                    progress = await planner.ProgressAsync(key, cancellationToken);
                }
            });
        return progress;
    }

    private static async Task ReportAsync(
        ExtractSettings settings, CliContext cli, Preprocessing preprocessing, ExtractionRequest request, FeatureSetRecord set, bool cached,
        TimeSpan elapsed, CancellationToken cancellationToken)
    {
        List<SkippedImageRecord> skipped;
        await using (ClusterDbContext db = cli.Database.CreateDbContext())
        {
            skipped = await db.SkippedImages.AsNoTracking().Where(s => s.DatasetId == set.DatasetId).OrderBy(s => s.Path).ToListAsync(cancellationToken);
        }
        // Both the files the scan could not use and the images the decoders skipped, as recorded for the dataset.
        var allSkipped = skipped.Select(s => (s.Path, s.Reason)).ToList();
        string path = Path.Combine(cli.Settings.StorageRoot, "features", set.Key);
        double seconds = elapsed.TotalSeconds;
        CliOutput.Write(settings, new
        {
            key = set.Key,
            cached,
            path,
            model = set.Model,
            layer = set.Layer,
            pooling = set.Pooling,
            precision = request.Precision,
            preprocessing = set.Preprocessing,
            inputSize = preprocessing.InputSize,
            dtype = set.Dtype,
            dataset = set.DatasetId,
            shape = set.Shape,
            images = set.ImageCount,
            extracted = set.ExtractedCount,
            shards = set.ShardCount,
            seconds = Math.Round(seconds, 2),
            imagesPerSecond = cached ? (double?)null : Math.Round(set.ImageCount / Math.Max(seconds, 1e-3), 1),
            skipped = allSkipped.Select(s => new { path = s.Path, reason = s.Reason }),
        }, () =>
        {
            AnsiConsole.Write(CliOutput.KeyValueTable(cached ? "[green]feature set reused from the cache[/]" : "[green]features extracted[/]",
            [
                ("key", set.Key),
                ("path", path),
                ("model", $"{set.Model} at {set.Layer}, pool {set.Pooling}, {request.Precision}"),
                ("features", $"{set.ExtractedCount} x [{set.Shape.Replace("x", ", ", StringComparison.Ordinal)}] {set.Dtype}"),
                ("input", $"{preprocessing.InputSize}x{preprocessing.InputSize} ({set.Preprocessing})"),
                ("images", $"{set.ImageCount} in {set.ShardCount} shard(s), {allSkipped.Count} skipped"),
                ("time", cached ? $"{seconds:F1} s (nothing to compute)" : $"{seconds:F1} s, {set.ImageCount / Math.Max(seconds, 1e-3):F1} images/s"),
            ]));
            if (allSkipped.Count > 0)
            {
                var table = new Table().Border(TableBorder.Simple).AddColumns("skipped image", "reason");
                foreach ((string p, string reason) in allSkipped.Take(20))
                {
                    table.AddRow(new Text(p), new Text(reason));
                }
                if (allSkipped.Count > 20)
                {
                    table.AddRow(new Text($"... and {allSkipped.Count - 20} more"), new Text(""));
                }
                AnsiConsole.Write(table);
            }
            AnsiConsole.MarkupLine($"[grey]Load in Python: see README (\"Reading features from Python\"); or `coordinator features export {Markup.Escape(set.Key)} --npy OUT.npy`.[/]");
        });
    }
}
