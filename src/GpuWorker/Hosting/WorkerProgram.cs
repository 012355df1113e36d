using System.Runtime.InteropServices;
using Cluster.GpuWorker.Devices;
using Cluster.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Serilog;

namespace Cluster.GpuWorker.Hosting;

/// <summary>The `gpu-worker` process: one per GPU (or CPU), consuming jobs from RabbitMQ.</summary>
public static class WorkerProgram
{
    public const string Usage = """
        gpu-worker: consumes jobs (feature extraction, training segments, self-tests) from RabbitMQ, one at a time.

        Usage: gpu-worker [--device cpu|cuda|cuda:N] [--id ID] [--lanes N] [--threads N] [-v]

          --lanes N     batches computed at once on a CPU worker, each on its own cores (default: 2 up to 8 cores,
                        then one per 4 cores, at most 4)
          --threads N   libtorch threads per lane (default: the cores shared out among the lanes)

        Settings (appsettings.json, environment variables, or --Section:Key=value):
          RabbitMq__Host, RabbitMq__Port, RabbitMq__VirtualHost, RabbitMq__Username, RabbitMq__Password
          Database__ConnectionString    PostgreSQL (Npgsql) connection string
          Cluster__StorageRoot          the shared storage folder
          Worker__HeartbeatSeconds      heartbeat interval (default 5)
          Worker__FeatureMemoryMiB      feature sets kept in memory between jobs (default -1: a quarter of memory)
          Logging__Json                 JSON lines on stdout (default true)

        Besides the shared queue, each worker takes from its own, gpu-work.<id>: the segments whose features it holds.
        On SIGTERM the worker stops taking jobs; an unfinished job goes back to the queue for another worker.
        """;

    private static readonly Dictionary<string, string> s_switches = new()
    {
        ["--device"] = "Worker:Device",
        ["--id"] = "Worker:Id",
        ["--threads"] = "Worker:TorchThreads",
        ["--lanes"] = "Worker:ForwardLanes",
    };

    public static async Task<int> RunAsync(string[] args)
    {
        if (args.Length > 0 && args[0] == Kernels.KernelProbeProgram.Command)
        {
            // The kernel check's child process (KernelVerifier): no host, no bus, only probes.
            return Kernels.KernelProbeProgram.Run(args[1..]);
        }
        if (args.Any(a => a is "-h" or "--help"))
        {
            Console.WriteLine(Usage);
            return 0;
        }
        TorchRuntime.Initialize();
        bool verbose = args.Any(a => a is "-v" or "--verbose");
        string[] configArgs = args.Where(a => a is not ("-v" or "--verbose")).ToArray();
        Log.Logger = ClusterLogging.Configure(new LoggerConfiguration(), json: false, verbose, toStdErr: true).CreateBootstrapLogger();
        try
        {
            HostApplicationBuilder builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings
            {
                Args = [],
                ContentRootPath = AppContext.BaseDirectory,
            });
            builder.Configuration.AddCommandLine(configArgs, s_switches);

            // The device first: `--device cuda` on a CPU build is the first thing the user should hear about.
            WorkerOptions options = builder.Configuration.GetSection(WorkerOptions.SectionName).Get<WorkerOptions>() ?? new WorkerOptions();
            TorchDevice device = TorchDevice.Resolve(options.Device);
            ClusterRuntimeSettings settings = ClusterSettingsResolver.Resolve(builder.Configuration, RuntimeMode.Cluster);
            bool json = builder.Configuration.GetValue("Logging:Json", true);

            builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(45));
            builder.Services.AddClusterDatabase(settings);
            builder.Services.AddGpuWorker(options, device);
            builder.Services.AddClusterBus(settings, new WorkerBusPart());
            builder.Services.AddSerilog((services, logger) => ClusterLogging
                .Configure(logger, json, verbose, toStdErr: false)
                .Enrich.WithProperty("WorkerId", services.GetRequiredService<WorkerIdentity>().WorkerId));

            using IHost host = builder.Build();
            using var untilSignal = new CancellationTokenSource();
            void StopWaiting(PosixSignalContext signal)
            {
                signal.Cancel = true;
                untilSignal.Cancel();
            }
            using PosixSignalRegistration onTerm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, StopWaiting);
            using PosixSignalRegistration onInt = PosixSignalRegistration.Create(PosixSignal.SIGINT, StopWaiting);
            var log = Log.ForContext("SourceContext", "gpu-worker");
            log.Information("Worker on {Device} (libtorch {TorchVersion}); waiting for {Broker} and {Database}",
                device.Name, TorchSharp.torch.__version__, settings.RabbitMq.Describe(), host.Services.GetRequiredService<Cluster.Storage.Database.ClusterDbContextFactory>().Describe());
            var logger = host.Services.GetRequiredService<Microsoft.Extensions.Logging.ILoggerFactory>().CreateLogger("gpu-worker");
            try
            {
                await ConnectivityCheck.WaitUntilReachableAsync(ct => ConnectivityCheck.ProbeRabbitMqAsync(settings.RabbitMq, ct), logger, untilSignal.Token);
                var database = host.Services.GetRequiredService<Cluster.Storage.Database.ClusterDbContextFactory>();
                await ConnectivityCheck.WaitUntilReachableAsync(ct => ConnectivityCheck.ProbeDatabaseAsync(database, ct), logger, untilSignal.Token);
            }
            catch (OperationCanceledException) when (untilSignal.IsCancellationRequested)
            {
                return 0;
            }
            // From here the generic host owns SIGTERM: stop taking jobs, let the unfinished one be redelivered.
            onTerm.Dispose();
            onInt.Dispose();
            await host.RunAsync();
            return 0;
        }
        catch (ClusterConfigurationException e)
        {
            Console.Error.WriteLine($"gpu-worker: error: {e.Message}");
            return 2;
        }
        catch (Exception e)
        {
            Log.Fatal(e, "gpu-worker terminated unexpectedly");
            return 1;
        }
        finally
        {
            await Log.CloseAndFlushAsync();
        }
    }
}
