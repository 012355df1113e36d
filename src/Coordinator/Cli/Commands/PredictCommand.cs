using System.ComponentModel;
using System.Globalization;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Prediction;
using Cluster.GpuWorker.Weights;
using Cluster.Hosting;
using Cluster.Storage.Checkpoints;
using Cluster.Storage.Datasets;
using Cluster.Storage.Files;
using Microsoft.EntityFrameworkCore;
using Spectre.Console;
using Spectre.Console.Cli;
using ValidationResult = Spectre.Console.ValidationResult;

namespace Cluster.Coordinator.Cli.Commands;

public sealed class PredictSettings : GlobalSettings
{
    [CommandArgument(0, "<IMAGES>")]
    [Description("Image files or folders (folders are searched recursively for images).")]
    public string[] Images { get; init; } = [];

    [CommandOption("--model <ARCH>")]
    [Description("An architecture with a classifier (`coordinator models list`), with --weights.")]
    public string? Model { get; init; }

    [CommandOption("--weights <FILE>")]
    [Description("Its weights: safetensors, PyTorch .pt/.pth state_dict, or TorchSharp.")]
    public string? Weights { get; init; }

    [CommandOption("--checkpoint <TRIAL|FILE>")]
    [Description("A trained trial (its id: the best checkpoint it kept) or a checkpoint file written by this project (architecture, input size and class names inside).")]
    public string? Checkpoint { get; init; }

    [CommandOption("--top <K>")]
    [DefaultValue(3)]
    public int Top { get; init; }

    public override ValidationResult Validate()
    {
        if ((Model is null) == (Checkpoint is null))
        {
            return ValidationResult.Error("give either --model ARCH (with --weights FILE) or --checkpoint FILE.");
        }
        if (Checkpoint is not null && Weights is not null)
        {
            return ValidationResult.Error("--weights goes with --model; a --checkpoint carries its own weights.");
        }
        return Top < 1 ? ValidationResult.Error($"--top {Top} must be at least 1.") : base.Validate();
    }
}

/// <summary>`coordinator predict`: the top-k classes of images under a pretrained classifier (case 1 of the reference).</summary>
public sealed class PredictCommand : Command<PredictSettings>
{
    public override int Execute(CommandContext context, PredictSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        List<string> images = ExpandImages(settings.Images);
        using Predictor predictor = Load(settings, cli);
        if (settings.Model is not null && settings.Weights is null)
        {
            Console.Error.WriteLine($"coordinator: warning: no --weights: {predictor.Architecture.Name} has random weights, so its predictions mean nothing.");
        }
        IReadOnlyList<ImagePrediction> predictions = predictor.Predict(images, settings.Top);
        CliOutput.Write(settings, predictions.Select(p => new
        {
            image = p.Image,
            predictions = p.Top.Select(c => new { @class = c.Class, index = c.Index, probability = Math.Round(c.Probability, 6) }),
            skipped = p.Skipped,
        }), () =>
        {
            var table = new Table().Border(TableBorder.Rounded).AddColumns("image", "rank", "class", "probability");
            foreach (ImagePrediction p in predictions)
            {
                if (p.Skipped is not null)
                {
                    table.AddRow(new Text(p.Image), new Text("-"), new Markup($"[yellow]skipped[/] {Markup.Escape(p.Skipped)}"), new Text(""));
                    continue;
                }
                for (int rank = 0; rank < p.Top.Count; rank++)
                {
                    table.AddRow(
                        new Text(rank == 0 ? p.Image : ""),
                        new Text((rank + 1).ToString(CultureInfo.InvariantCulture)),
                        new Text(p.Top[rank].Class),
                        new Text(p.Top[rank].Probability.ToString("P1", CultureInfo.InvariantCulture)));
                }
            }
            AnsiConsole.Write(table);
        });
        return predictions.Any(p => p.Skipped is null) ? 0 : 1;
    }

    private static Predictor Load(PredictSettings settings, CliContext cli)
    {
        try
        {
            return settings.Checkpoint is not null
                ? FromCheckpoint(settings.Checkpoint, cli)
                : Predictor.FromArchitecture(settings.Model!, settings.Weights is null ? null : Require(settings.Weights, "--weights"), cli.KernelVerifier());
        }
        catch (Exception e) when (e is WeightsFileException or WeightsMismatchException or ArgumentException)
        {
            throw new ClusterConfigurationException(e.Message, e);
        }
    }

    /// <summary>
    /// A trial id names the checkpoint the trial kept (its best); a file is either a trial's checkpoint (the JSON beside it
    /// describes it) or a plain checkpoint with its description in the safetensors metadata.
    /// </summary>
    private static Predictor FromCheckpoint(string checkpoint, CliContext cli)
    {
        string file = checkpoint;
        if (!File.Exists(checkpoint) && Guid.TryParse(checkpoint, out Guid trialId))
        {
            using var db = cli.Database.CreateDbContext();
            var trial = db.Trials.AsNoTracking().SingleOrDefault(t => t.Id == trialId)
                ?? throw new ClusterConfigurationException($"--checkpoint {checkpoint}: no such trial in {cli.Database.Describe()}.");
            file = trial.Checkpoint is string path
                ? new FileStore(cli.Settings.StorageRoot).Resolve(path)
                : throw new ClusterConfigurationException($"--checkpoint {checkpoint}: the trial has no checkpoint (status {trial.Status.ToString().ToLowerInvariant()}).");
        }
        Require(file, "--checkpoint");
        string description = Path.ChangeExtension(file, ".json");
        if (File.Exists(description))
        {
            var info = System.Text.Json.JsonSerializer.Deserialize<CheckpointInfo>(File.ReadAllText(description), new System.Text.Json.JsonSerializerOptions(System.Text.Json.JsonSerializerDefaults.Web))
                ?? throw new ClusterConfigurationException($"--checkpoint '{file}': {description} is empty.");
            return Predictor.FromTrainingCheckpoint(file, info.State, cli.KernelVerifier());
        }
        return Predictor.FromCheckpoint(file, cli.KernelVerifier());
    }

    private static string Require(string file, string option) =>
        File.Exists(file) ? file : throw new ClusterConfigurationException($"{option} '{file}' does not exist.");

    /// <summary>Files as given (a bad one is reported, not fatal); folders searched for image files, in name order.</summary>
    private static List<string> ExpandImages(IEnumerable<string> arguments)
    {
        var images = new List<string>();
        foreach (string argument in arguments)
        {
            if (Directory.Exists(argument))
            {
                images.AddRange(Directory.EnumerateFiles(argument, "*", SearchOption.AllDirectories)
                    .Where(f => DatasetScanner.ImageExtensions.Contains(Path.GetExtension(f)))
                    .Order(StringComparer.Ordinal));
            }
            else if (File.Exists(argument))
            {
                images.Add(argument);
            }
            else
            {
                throw new ClusterConfigurationException($"image '{argument}' does not exist.");
            }
        }
        return images.Count > 0 ? images : throw new ClusterConfigurationException("no images found in: " + string.Join(", ", arguments));
    }
}
