using System.Runtime.InteropServices;
using Cluster.Coordinator.Cli.Commands;
using Cluster.Hosting;
using Cluster.Storage.Datasets;
using Cluster.Storage.Files;
using Serilog;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli;

/// <summary>
/// The `coordinator` command line. Exit codes: 0 success, 1 the job failed, 2 bad usage or bad input
/// (one clear line on stderr; the stack trace only with -v).
/// </summary>
public static class CoordinatorCli
{
    public static async Task<int> RunAsync(string[] args)
    {
        if (!ReadsStateOnly(args))
        {
            Cluster.GpuWorker.Devices.TorchRuntime.Initialize();
        }
        bool verbose = args.Any(a => a is "-v" or "--verbose");
        using var cancel = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true;
            cancel.Cancel();
        };
        Console.CancelKeyPress += onCancel;
        using PosixSignalRegistration onTerm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c =>
        {
            c.Cancel = true;
            cancel.Cancel();
        });
        if (Console.IsOutputRedirected)
        {
            // Tables written to a file or a pipe are read later, not in an 80-column terminal: don't wrap them.
            Spectre.Console.AnsiConsole.Profile.Width = 240;
        }
        try
        {
            return await CreateApp().RunAsync(args, cancel.Token);
        }
        catch (Exception e) when (UserError(e) is string message)
        {
            Console.Error.WriteLine($"coordinator: error: {message}");
            if (verbose)
            {
                Console.Error.WriteLine(e);
            }
            return 2;
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
            Console.Error.WriteLine("coordinator: cancelled.");
            return 1;
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"coordinator: failed: {e.GetBaseException().Message}");
            if (verbose)
            {
                Console.Error.WriteLine(e);
            }
            return 1;
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
            await Log.CloseAndFlushAsync();
        }
    }

    /// <summary>
    /// Commands that only read or change cluster state (no tensors, no hosted worker): they skip loading libtorch, half a
    /// second of every `sweep status` or `workers` on these machines. Everything else initializes it first, before any
    /// native allocation (see TorchRuntime).
    /// </summary>
    private static bool ReadsStateOnly(string[] args)
    {
        string[] words = [.. args.Where(a => !a.StartsWith('-')).Take(2)];
        return words switch
        {
            [] => true,
            ["workers" or "errors" or "config" or "db", ..] => true,
            ["sweep", "status" or "list" or "watch" or "results" or "cancel" or "resume"] => true,
            _ => false,
        };
    }

    public static CommandApp CreateApp()
    {
        var app = new CommandApp();
        app.Configure(c =>
        {
            c.SetApplicationName("coordinator");
            c.PropagateExceptions();
            // An option no command knows (a typo such as --formt) is an error, not silently ignored.
            c.Settings.StrictParsing = true;
            c.AddCommand<DemoCommand>("demo")
                .WithDescription("An embedded sweep on the bundled Fashion-MNIST sample (ResNet-18: heads on features, fine-tune-top, fine-tune-all), then the leaderboard and the path of its HTML report.")
                .WithExample("demo")
                .WithExample("demo", "--format", "json");
            c.AddCommand<SelfTestCommand>("selftest")
                .WithDescription("Send a small TorchSharp job to the workers and print the result as recorded in the database.")
                .WithExample("selftest")
                .WithExample("selftest", "--cluster", "--format", "json");
            c.AddCommand<ServeCommand>("serve")
                .WithDescription("Run the coordinator service: records worker heartbeats, schedules sweeps from the workers' events (a segment goes to the worker holding its features in memory; Coordinator__Locality=false: all to the shared queue), continues unfinished sweeps after a restart.");
            c.AddCommand<WorkersCommand>("workers")
                .WithDescription("List live workers from their heartbeats.");
            c.AddCommand<ErrorsCommand>("errors")
                .WithDescription("List the jobs in the error queue (no worker could finish them; their trials or shards were failed) with their reasons; --requeue sends extraction shards back to the workers.")
                .WithExample("errors", "--cluster")
                .WithExample("errors", "--cluster", "--requeue", "--format", "json");
            c.AddCommand<ExtractCommand>("extract")
                .WithDescription("Extract a dataset's features at a model's tap, sharded across the workers; reuses cached feature sets.")
                .WithExample("extract", "--dataset", "cats_and_dogs_small/train", "--model", "vgg19", "--layer", "block4_pool", "--weights", "vgg19.pth")
                .WithExample("extract", "--dataset", "photos", "--precision", "bf16");
            c.AddCommand<PredictCommand>("predict")
                .WithDescription("Top-k classes of images under a pretrained classifier (ImageNet names for 1000-class heads).")
                .WithExample("predict", "--model", "resnet50", "--weights", "resnet50.pth", "elephant.jpg")
                .WithExample("predict", "--checkpoint", "best.safetensors", "photos/", "--top", "5", "--format", "json");
            c.AddBranch("sweep", sweep =>
            {
                sweep.SetDescription("Sweeps over models, strategies, cutoffs, heads and learning rates (DESIGN.md's spec).");
                sweep.AddCommand<SweepPlanCommand>("plan")
                    .WithDescription("What a spec would run, nothing run: its trials, the feature sets they share (cached or to extract), and the cost against no sharing.")
                    .WithExample("sweep", "plan", "examples/fashion-transfer.yaml")
                    .WithExample("sweep", "plan", "examples/fashion-transfer.yaml", "--format", "json");
                sweep.AddCommand<SweepRunCommand>("run")
                    .WithDescription("Run a spec to completion (embedded by default) with a progress bar, then print its results and the path of its HTML report; a spec whose every field has one value is one trial.")
                    .WithExample("sweep", "run", "examples/fashion-one-trial.yaml")
                    .WithExample("sweep", "run", "examples/feature-extractor-logistic.yaml", "--format", "json")
                    .WithExample("sweep", "run", "examples/fashion-transfer.yaml", "--no-share");
                sweep.AddCommand<SweepSubmitCommand>("submit")
                    .WithDescription("Check a spec, make sure of its feature sets, and hand the sweep to the cluster's coordinator service; prints its id.")
                    .WithExample("sweep", "submit", "examples/fashion-transfer.yaml", "--cluster");
                sweep.AddCommand<SweepListCommand>("list").WithDescription("Every sweep, newest first: state, trials ended, best validation accuracy.");
                sweep.AddCommand<SweepStatusCommand>("status").WithDescription("A sweep's state and its trials (failed ones with their reasons), once.")
                    .WithExample("sweep", "status", "3f9a0c1d");
                sweep.AddCommand<SweepWatchCommand>("watch").WithDescription("A live table of a sweep's trials (state, rung, epoch, metric, worker) until it ends.")
                    .WithExample("sweep", "watch", "3f9a0c1d");
                sweep.AddCommand<SweepResultsCommand>("results").WithDescription("The leaderboard, best first: a table, DESIGN.md's JSON results format, or CSV.")
                    .WithExample("sweep", "results", "3f9a0c1d", "--top", "5")
                    .WithExample("sweep", "results", "3f9a0c1d", "--format", "csv");
                sweep.AddCommand<SweepReportCommand>("report")
                    .WithDescription("Write the sweep's report, one self-contained HTML file (reports/ID/index.html): leaderboard, accuracy against learning rate, learning curves, ASHA rungs, where the time went and what sharing saved; prints its path.")
                    .WithExample("sweep", "report", "3f9a0c1d")
                    .WithExample("sweep", "report", "3f9a0c1d", "--format", "json");
                sweep.AddCommand<SweepCancelCommand>("cancel").WithDescription("Stop dispatching a sweep's work; segments in flight finish at their checkpoint.")
                    .WithExample("sweep", "cancel", "3f9a0c1d");
                sweep.AddCommand<SweepResumeCommand>("resume").WithDescription("Continue a cancelled or interrupted sweep, each trial from its last checkpoint (embedded: here, to its end).")
                    .WithExample("sweep", "resume", "3f9a0c1d");
            });
            c.AddBranch("storage", storage =>
            {
                storage.SetDescription("The shared storage root.");
                storage.AddCommand<StorageUsageCommand>("usage").WithDescription("What the storage root keeps, where, and how big: areas, feature sets, checkpoints per trial.")
                    .WithExample("storage", "usage", "--format", "json");
            });
            c.AddBranch("features", features =>
            {
                features.SetDescription("The feature cache.");
                features.AddCommand<FeaturesListCommand>("list").WithDescription("Feature sets: key, model, layer, status, shape.");
                features.AddCommand<FeaturesExportCommand>("export").WithDescription("Write a feature set as one .npy file (and its row ids).")
                    .WithExample("features", "export", "resnet18-imagenet.avgpool.059da588849bff4dc5f6", "--npy", "features.npy");
            });
            c.AddBranch("models", models =>
            {
                models.SetDescription("Architectures, weights sources and taps.");
                models.AddCommand<ModelsListCommand>("list").WithDescription("Every architecture: input size, preprocessing, parameters, default tap.");
                models.AddCommand<ModelsLayersCommand>("layers").WithDescription("An architecture's taps with output shapes and what a cutoff there freezes.")
                    .WithExample("models", "layers", "vgg19");
                models.AddCommand<ModelsBenchCommand>("bench").WithDescription("Forward-only images/s on random input (the compute limit of this machine).")
                    .WithExample("models", "bench", "resnet18", "--precision", "bf16");
            });
            c.AddBranch("dataset", dataset =>
            {
                dataset.SetDescription("Datasets: import image files, scan folders into versioned manifests.");
                dataset.AddCommand<DatasetImportIdxCommand>("import-idx")
                    .WithDescription("Write an IDX (MNIST / Fashion-MNIST) image and label file pair as a folder of PNGs, one subfolder per class.")
                    .WithExample("dataset", "import-idx", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "fashion-test", "--classes", "fashion-mnist");
                dataset.AddCommand<DatasetScanCommand>("scan")
                    .WithDescription("Hash a folder of images (one subfolder per class, or --manifest) into datasets/<id>/manifest.tsv under the storage root.")
                    .WithExample("dataset", "scan", "cats_and_dogs_small/train")
                    .WithExample("dataset", "scan", "photos", "--manifest", "photos/labels.tsv", "--format", "json");
            });
            c.AddBranch("config", config =>
            {
                config.SetDescription("Configuration.");
                config.AddCommand<ConfigShowCommand>("show").WithDescription("Show the settings in force (secrets masked).");
            });
            c.AddBranch("db", db =>
            {
                db.SetDescription("Database schema.");
                db.AddCommand<DbMigrateCommand>("migrate").WithDescription("Apply pending schema migrations.");
            });
        });
        return app;
    }

    /// <summary>The one line to print for an error the user can fix, or null for a failure of the job itself.</summary>
    private static string? UserError(Exception e) => e switch
    {
        ClusterConfigurationException => e.Message,
        StoragePathException => e.Message,
        // An architecture, layer or feature set name the user typed: the message lists the valid ones.
        Cluster.GpuWorker.Models.UnknownNameException => e.Message,
        DatasetInputException => e.Message,
        CommandParseException or CommandRuntimeException => e.Message,
        _ => null,
    };
}
