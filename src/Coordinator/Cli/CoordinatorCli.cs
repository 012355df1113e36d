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
        Cluster.GpuWorker.Devices.TorchRuntime.Initialize();
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

    public static CommandApp CreateApp()
    {
        var app = new CommandApp();
        app.Configure(c =>
        {
            c.SetApplicationName("coordinator");
            c.PropagateExceptions();
            c.AddCommand<SelfTestCommand>("selftest")
                .WithDescription("Send a small TorchSharp job to the workers and print the result as recorded in the database.")
                .WithExample("selftest")
                .WithExample("selftest", "--cluster", "--format", "json");
            c.AddCommand<ServeCommand>("serve")
                .WithDescription("Run the coordinator service (records worker heartbeats; later: plans and schedules sweeps).");
            c.AddCommand<WorkersCommand>("workers")
                .WithDescription("List live workers from their heartbeats.");
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
        DatasetInputException => e.Message,
        CommandParseException or CommandRuntimeException => e.Message,
        _ => null,
    };
}
