using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Npgsql;
using Shouldly;

namespace Cluster.IntegrationTests.Support;

/// <summary>
/// One test's own slice of the servers: a RabbitMQ virtual host, a PostgreSQL database and a storage folder,
/// created fresh and removed afterwards, so tests never see each other's queues, rows or files.
/// </summary>
public sealed class IsolatedCluster : IAsyncDisposable
{
    private static readonly HttpClient s_management = CreateManagementClient();
    private static readonly string s_kernelCache = Cluster.TestSupport.RunFolder.Create("cluster-it-kernels");
    private readonly List<ClusterProcess> _processes = [];

    private IsolatedCluster(string name)
    {
        Name = name;
        StorageRoot = Path.Combine(Path.GetTempPath(), name);
        Directory.CreateDirectory(StorageRoot);
        // Pooled, as the deployment runs: unpooled, every query of every child process opened a new PostgreSQL
        // session (a backend fork), about ten a second per test. Teardown drops the database WITH (FORCE).
        DatabaseConnectionString = new NpgsqlConnectionStringBuilder(TestServers.PostgresAdmin) { Database = name }.ConnectionString;
        Environment = new Dictionary<string, string>
        {
            ["Cluster__Mode"] = "cluster",
            ["Cluster__StorageRoot"] = StorageRoot,
            ["RabbitMq__Host"] = TestServers.RabbitHost,
            ["RabbitMq__Port"] = TestServers.RabbitPort.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["RabbitMq__VirtualHost"] = name,
            ["RabbitMq__Username"] = TestServers.RabbitUser,
            ["RabbitMq__Password"] = TestServers.RabbitPassword,
            ["Database__ConnectionString"] = DatabaseConnectionString,
            // Fast heartbeats keep the tests short; the production default is 5 s.
            ["Worker__HeartbeatSeconds"] = "1",
            ["Worker__TorchThreads"] = "1",
            // Kernel verdicts are a fact about the machine, not state of a test: the tests of one run share them.
            ["Worker__KernelCache"] = s_kernelCache,
            ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1",
        };
        // Workers run as the deployment runs them: their own PostgreSQL role, granted only what a worker needs by
        // `db migrate --worker-role`, and their own RabbitMQ user with rights on this virtual host alone.
        WorkerRole = name + "_worker";
        WorkerPassword = Guid.NewGuid().ToString("N");
    }

    /// <summary>The workers' PostgreSQL role and RabbitMQ user (one name for both).</summary>
    public string WorkerRole { get; }

    public string WorkerPassword { get; }

    /// <summary><see cref="Environment"/> (as a test has changed it) with the workers' own credentials.</summary>
    public Dictionary<string, string> WorkerEnvironment => new(Environment)
    {
        ["RabbitMq__Username"] = WorkerRole,
        ["RabbitMq__Password"] = WorkerPassword,
        ["Database__ConnectionString"] = new NpgsqlConnectionStringBuilder(Environment["Database__ConnectionString"]) { Username = WorkerRole, Password = WorkerPassword }.ConnectionString,
    };

    /// <summary>Used as the virtual host, the database and the storage folder name.</summary>
    public string Name { get; }

    public string StorageRoot { get; }

    public string DatabaseConnectionString { get; }

    /// <summary>Environment variables that point a child process at this slice.</summary>
    public Dictionary<string, string> Environment { get; }

    public static async Task<IsolatedCluster> CreateAsync()
    {
        var cluster = new IsolatedCluster("it_" + Guid.NewGuid().ToString("N")[..12]);
        string vhost = Uri.EscapeDataString(cluster.Name);
        (await s_management.PutAsync($"api/vhosts/{vhost}", Json("{}"))).EnsureSuccessStatusCode();
        (await s_management.PutAsync($"api/permissions/{vhost}/{Uri.EscapeDataString(TestServers.RabbitUser)}",
            Json("""{"configure":".*","write":".*","read":".*"}"""))).EnsureSuccessStatusCode();
        await using var admin = new NpgsqlConnection(TestServers.PostgresAdmin);
        await admin.OpenAsync();
        await using var create = new NpgsqlCommand($"CREATE DATABASE \"{cluster.Name}\"", admin);
        await create.ExecuteNonQueryAsync();
        await using var role = new NpgsqlCommand($"CREATE ROLE {cluster.WorkerRole} LOGIN PASSWORD '{cluster.WorkerPassword}'", admin);
        await role.ExecuteNonQueryAsync();
        string user = Uri.EscapeDataString(cluster.WorkerRole);
        (await s_management.PutAsync($"api/users/{user}", Json($$"""{"password":"{{cluster.WorkerPassword}}","tags":""}"""))).EnsureSuccessStatusCode();
        (await s_management.PutAsync($"api/permissions/{vhost}/{user}", Json("""{"configure":".*","write":".*","read":".*"}"""))).EnsureSuccessStatusCode();
        return cluster;
    }

    /// <summary>`coordinator db migrate --worker-role`: the schema, and the workers' rights on it.</summary>
    public async Task MigrateAsync(TimeSpan timeout)
    {
        (int code, ClusterProcess migrate) = await RunCoordinatorAsync(timeout, "db", "migrate", "--worker-role", WorkerRole);
        code.ShouldBe(0, migrate.Describe());
    }

    public ClusterProcess Coordinator(params string[] args) => Track(ClusterProcess.Coordinator(this, args));

    public ClusterProcess Worker(params string[] args) => Track(ClusterProcess.Worker(this, args));

    /// <summary>Runs a coordinator command to completion; returns it for its exit code and output.</summary>
    public async Task<(int ExitCode, ClusterProcess Process)> RunCoordinatorAsync(TimeSpan timeout, params string[] args)
    {
        ClusterProcess process = Coordinator(args);
        int code = await process.WaitForExitAsync(timeout);
        return (code, process);
    }

    /// <summary>`coordinator sweep submit SPEC --cluster`: the new sweep's id.</summary>
    public async Task<Guid> SubmitSweepAsync(string spec, TimeSpan timeout)
    {
        (int code, ClusterProcess submit) = await RunCoordinatorAsync(timeout, "sweep", "submit", spec, "--cluster", "--format", "json");
        code.ShouldBe(0, submit.Describe());
        using JsonDocument json = JsonDocument.Parse(submit.StandardOutput);
        return json.RootElement.GetProperty("sweep").GetGuid();
    }

    /// <summary>
    /// One worker's row as `coordinator serve` recorded it from its heartbeats; null until it is (or while `serve` has
    /// not created the schema yet, or is between two migrations). Tests wait on this rather than start `coordinator
    /// workers` every poll (a process each, about a CPU-second); they run the command once the row shows what they wait for.
    /// </summary>
    public async Task<WorkerRecord?> RecordedWorkerAsync(string workerId)
    {
        await using ClusterDbContext db = Database();
        try
        {
            return await db.Workers.AsNoTracking().SingleOrDefaultAsync(w => w.Id == workerId);
        }
        catch (PostgresException e) when (e.SqlState is "42P01" or "42703")
        {
            // No table yet, or the table without the column a later migration adds.
            return null;
        }
    }

    /// <summary>`coordinator workers --cluster --format json` (with `--all` unless only live ones are asked for): one worker's row, or null.</summary>
    public async Task<JsonElement?> ListedWorkerAsync(string workerId, TimeSpan timeout, bool all = true)
    {
        string[] args = all ? ["workers", "--cluster", "--all", "--format", "json"] : ["workers", "--cluster", "--format", "json"];
        (int code, ClusterProcess list) = await RunCoordinatorAsync(timeout, args);
        code.ShouldBe(0, list.Describe());
        using JsonDocument json = JsonDocument.Parse(list.StandardOutput);
        foreach (JsonElement row in json.RootElement.EnumerateArray())
        {
            if (row.GetProperty("id").GetString() == workerId)
            {
                return row.Clone();
            }
        }
        return null;
    }

    /// <summary>This slice's broker settings, as the child processes read them from <see cref="Environment"/>.</summary>
    public Cluster.Hosting.RabbitMqOptions RabbitMq => new()
    {
        Host = TestServers.RabbitHost,
        Port = TestServers.RabbitPort,
        VirtualHost = Name,
        Username = TestServers.RabbitUser,
        Password = TestServers.RabbitPassword,
    };

    /// <summary>
    /// Sends jobs to the shared queue from a bus of the test's own, as a coordinator (or anyone holding the virtual host's
    /// credentials) would: for jobs no coordinator would write.
    /// </summary>
    public async Task SendJobsAsync(params object[] jobs)
    {
        await DeclareJobQueuesAsync();
        IBusControl bus = Bus.Factory.CreateUsingRabbitMq(cfg =>
            cfg.Host(TestServers.RabbitHost, (ushort)TestServers.RabbitPort, Name, h =>
            {
                h.Username(TestServers.RabbitUser);
                h.Password(TestServers.RabbitPassword);
            }));
        await bus.StartAsync();
        try
        {
            ISendEndpoint queue = await bus.GetSendEndpoint(Cluster.Hosting.ClusterBus.GpuWorkQueue);
            foreach (object job in jobs)
            {
                await queue.Send(job);
            }
        }
        finally
        {
            await bus.StopAsync();
        }
    }

    /// <summary>
    /// Declares the job queues as every cluster process does before its bus starts. A test that sends jobs from its own bus
    /// needs it: jobs go to the shared queue's exchange, which drops what it gets before the queue is bound to it.
    /// </summary>
    public async Task DeclareJobQueuesAsync()
    {
        string? failure = await Cluster.Hosting.ConnectivityCheck.ProbeRabbitMqAsync(RabbitMq, CancellationToken.None);
        failure.ShouldBeNull();
    }

    public ClusterDbContext Database() => new ClusterDbContextFactory(DatabaseProvider.Postgres, DatabaseConnectionString).CreateDbContext();

    /// <summary>A queue's message counts from the management API, or null when the queue does not exist.</summary>
    public async Task<QueueCounts?> QueueAsync(string queue)
    {
        using HttpResponseMessage response = await s_management.GetAsync($"api/queues/{Uri.EscapeDataString(Name)}/{Uri.EscapeDataString(queue)}");
        if (response.StatusCode == System.Net.HttpStatusCode.NotFound)
        {
            return null;
        }
        response.EnsureSuccessStatusCode();
        using JsonDocument json = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        int Count(string name) => json.RootElement.TryGetProperty(name, out JsonElement e) && e.ValueKind == JsonValueKind.Number ? e.GetInt32() : 0;
        return new QueueCounts(Count("messages_ready"), Count("messages_unacknowledged"), Count("consumers"));
    }

    public string DescribeProcesses() => string.Join("\n", _processes.Select(p => p.Describe()));

    public async ValueTask DisposeAsync()
    {
        foreach (ClusterProcess process in _processes)
        {
            await process.DisposeAsync();
        }
        try
        {
            await s_management.DeleteAsync($"api/vhosts/{Uri.EscapeDataString(Name)}");
            await s_management.DeleteAsync($"api/users/{Uri.EscapeDataString(WorkerRole)}");
            await using var admin = new NpgsqlConnection(TestServers.PostgresAdmin);
            await admin.OpenAsync();
            await using var drop = new NpgsqlCommand($"DROP DATABASE IF EXISTS \"{Name}\" WITH (FORCE)", admin);
            await drop.ExecuteNonQueryAsync();
            await using var dropRole = new NpgsqlCommand($"DROP ROLE IF EXISTS {WorkerRole}", admin);
            await dropRole.ExecuteNonQueryAsync();
        }
        finally
        {
            NpgsqlConnection.ClearAllPools();
            Directory.Delete(StorageRoot, recursive: true);
        }
    }

    private ClusterProcess Track(ClusterProcess process)
    {
        _processes.Add(process);
        return process;
    }

    private static StringContent Json(string body) => new(body, Encoding.UTF8, "application/json");

    private static HttpClient CreateManagementClient()
    {
        var client = new HttpClient { BaseAddress = new Uri($"http://{TestServers.RabbitHost}:{TestServers.RabbitManagementPort}/"), Timeout = TimeSpan.FromSeconds(30) };
        client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic",
            Convert.ToBase64String(Encoding.UTF8.GetBytes($"{TestServers.RabbitUser}:{TestServers.RabbitPassword}")));
        return client;
    }
}

public sealed record QueueCounts(int Ready, int Unacknowledged, int Consumers);
