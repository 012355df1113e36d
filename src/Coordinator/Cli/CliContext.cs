using Cluster.Coordinator.Orchestration;
using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Hosting;
using Cluster.Hosting;
using Cluster.Storage.Database;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Serilog;

namespace Cluster.Coordinator.Cli;

/// <summary>
/// What a command resolves once from its options: configuration (appsettings.json, environment variables,
/// --set and flags), the runtime settings, logging, and the host it runs its bus in.
/// </summary>
public sealed class CliContext
{
    private CliContext(GlobalSettings options, IConfigurationRoot configuration, ClusterRuntimeSettings settings)
    {
        Options = options;
        Configuration = configuration;
        Settings = settings;
        Database = new ClusterDbContextFactory(settings.DatabaseProvider, settings.DatabaseConnectionString);
    }

    public GlobalSettings Options { get; }

    public IConfigurationRoot Configuration { get; }

    public ClusterRuntimeSettings Settings { get; }

    public ClusterDbContextFactory Database { get; }

    public bool IsEmbedded => Settings.Mode == RuntimeMode.Embedded;

    /// <param name="embeddedOnly">The command runs embedded whatever the configuration says (`demo`).</param>
    public static CliContext Create(GlobalSettings options, bool serviceLogging = false, bool embeddedOnly = false)
    {
        var overrides = new Dictionary<string, string?>();
        foreach (string s in options.Set)
        {
            int eq = s.IndexOf('=', StringComparison.Ordinal);
            overrides[s[..eq].Replace("__", ":", StringComparison.Ordinal)] = s[(eq + 1)..];
        }
        if (options.Storage is not null)
        {
            overrides[$"{ClusterOptions.SectionName}:{nameof(ClusterOptions.StorageRoot)}"] = options.Storage;
        }
        IConfigurationRoot configuration = new ConfigurationBuilder()
            .SetBasePath(AppContext.BaseDirectory)
            .AddJsonFile("appsettings.json", optional: true)
            .AddEnvironmentVariables()
            .AddInMemoryCollection(overrides)
            .Build();
        RuntimeMode? mode = options.Embedded || embeddedOnly ? RuntimeMode.Embedded : options.Cluster ? RuntimeMode.Cluster : null;
        ClusterRuntimeSettings settings = ClusterSettingsResolver.Resolve(configuration, mode);

        // The CLI writes results on stdout and logs on stderr; the service logs JSON lines on stdout in the cluster.
        bool json = serviceLogging && settings.Mode == RuntimeMode.Cluster && configuration.GetValue("Logging:Json", true);
        // A command's own output is its result; its logs show only warnings unless -v.
        Log.Logger = ClusterLogging.Configure(
            new LoggerConfiguration(), json, options.Verbose, toStdErr: !serviceLogging,
            serviceLogging ? Serilog.Events.LogEventLevel.Information : Serilog.Events.LogEventLevel.Warning).CreateLogger();
        return new CliContext(options, configuration, settings);
    }

    /// <summary>
    /// Fails with one clear line unless the database answers and its schema is current. Embedded, it is
    /// brought up to date instead (the SQLite file belongs to this user alone).
    /// </summary>
    public async Task RequireDatabaseAsync(CancellationToken cancellationToken)
    {
        await ConnectivityCheck.RequireAsync(ct => ConnectivityCheck.ProbeDatabaseAsync(Database, ct), cancellationToken);
        if (IsEmbedded)
        {
            await Database.MigrateAsync(cancellationToken);
            return;
        }
        await using ClusterDbContext db = Database.CreateDbContext();
        int pending = (await Microsoft.EntityFrameworkCore.RelationalDatabaseFacadeExtensions.GetPendingMigrationsAsync(db.Database, cancellationToken)).Count();
        if (pending > 0)
        {
            throw new ClusterConfigurationException(
                $"{Database.Describe()} has {pending} pending migration(s): run `coordinator db migrate` first.");
        }
    }

    /// <summary>
    /// The kernel check for models this process runs itself (`models bench`, `predict`), with the workers' settings
    /// (`Worker:KernelCache`), logging to this command's log.
    /// </summary>
    public GpuWorker.Kernels.KernelVerifier KernelVerifier()
    {
        WorkerOptions worker = Configuration.GetSection(WorkerOptions.SectionName).Get<WorkerOptions>() ?? new WorkerOptions();
        var options = new GpuWorker.Kernels.KernelVerifierOptions
        {
            CacheDirectory = string.IsNullOrWhiteSpace(worker.KernelCache) ? GpuWorker.Kernels.KernelVerifierOptions.DefaultCacheDirectory : worker.KernelCache,
        };
        using var loggers = new Serilog.Extensions.Logging.SerilogLoggerFactory(Log.Logger);
        return new GpuWorker.Kernels.KernelVerifier(options, Microsoft.Extensions.Logging.LoggerFactoryExtensions.CreateLogger<GpuWorker.Kernels.KernelVerifier>(loggers));
    }

    public Task RequireBrokerAsync(CancellationToken cancellationToken) =>
        IsEmbedded
            ? Task.CompletedTask
            : ConnectivityCheck.RequireAsync(ct => ConnectivityCheck.ProbeRabbitMqAsync(Settings.RabbitMq, ct), cancellationToken);

    /// <summary>
    /// The host a command runs its bus in. Embedded, it also hosts the coordinator service and one CPU worker,
    /// so a job sent travels the same consumers it would in the cluster. In the cluster, a plain client has
    /// no receive endpoints of its own; `serve` adds the coordinator service.
    /// </summary>
    public IHost BuildHost(bool coordinatorService)
    {
        HostApplicationBuilder builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings
        {
            Args = [],
            ContentRootPath = AppContext.BaseDirectory,
            DisableDefaults = true,
        });
        builder.Configuration.AddConfiguration(Configuration);
        builder.Services.AddSerilog(Log.Logger, dispose: false);
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(45));
        builder.Services.AddClusterDatabase(Settings);

        var parts = new List<IClusterBusPart>();
        if (coordinatorService || IsEmbedded)
        {
            parts.Add(new CoordinatorBusPart());
        }
        if (IsEmbedded)
        {
            WorkerOptions worker = Configuration.GetSection(WorkerOptions.SectionName).Get<WorkerOptions>() ?? new WorkerOptions();
            worker.Id ??= $"embedded-{Environment.MachineName}";
            builder.Services.AddGpuWorker(worker, TorchDevice.Cpu);
            parts.Add(new WorkerBusPart());
        }
        builder.Services.AddClusterBus(Settings, parts.ToArray());
        if (coordinatorService && !IsEmbedded)
        {
            // After the bus (registered above, so started first): a restarted service continues every unfinished sweep.
            builder.Services.AddHostedService<SweepRecoveryOnStart>();
        }
        return builder.Build();
    }
}
