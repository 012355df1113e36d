using System.Net;
using System.Net.Sockets;
using Cluster.IntegrationTests.Support;
using Shouldly;

namespace Cluster.IntegrationTests;

/// <summary>Configuration errors give one clear line naming what and where, and exit code 2; services retry instead.</summary>
public sealed class BadInputTests : IAsyncLifetime
{
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(2);
    private IsolatedCluster _cluster = null!;

    public async Task InitializeAsync() => _cluster = await IsolatedCluster.CreateAsync();

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    /// <summary>A loopback port nothing listens on (bound, then released).</summary>
    private static int ClosedPort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static void ShouldBeOneClearLine(ClusterProcess process, int exitCode, params string[] fragments)
    {
        exitCode.ShouldBe(2, process.Describe());
        string[] lines = process.StandardError.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        lines.Length.ShouldBe(1, process.Describe());
        lines[0].ShouldStartWith("coordinator: error: ");
        foreach (string fragment in fragments)
        {
            lines[0].ShouldContain(fragment, Case.Insensitive, process.Describe());
        }
        process.StandardError.ShouldNotContain("   at ");
    }

    [Fact]
    public async Task Unreachable_broker_names_host_and_port()
    {
        int port = ClosedPort();
        _cluster.Environment["RabbitMq__Port"] = port.ToString(System.Globalization.CultureInfo.InvariantCulture);

        (int code, ClusterProcess p) = await _cluster.RunCoordinatorAsync(s_deadline, "selftest", "--cluster");

        ShouldBeOneClearLine(p, code, $"RabbitMQ at 127.0.0.1:{port}", "connection refused");
    }

    [Fact]
    public async Task Wrong_broker_password_says_the_user_was_refused()
    {
        _cluster.Environment["RabbitMq__Password"] = "not-the-password";

        (int code, ClusterProcess p) = await _cluster.RunCoordinatorAsync(s_deadline, "selftest", "--cluster");

        ShouldBeOneClearLine(p, code, $"RabbitMQ at {TestServers.RabbitHost}:{TestServers.RabbitPort}", "wrong user name or password");
        p.StandardError.ShouldNotContain("not-the-password");
    }

    [Fact]
    public async Task Unreachable_database_names_host_and_port()
    {
        int port = ClosedPort();
        _cluster.Environment["Database__ConnectionString"] = $"Host=127.0.0.1;Port={port};Database=x;Username=postgres";

        (int code, ClusterProcess p) = await _cluster.RunCoordinatorAsync(s_deadline, "db", "migrate", "--cluster");

        ShouldBeOneClearLine(p, code, $"PostgreSQL at 127.0.0.1:{port}/x", "connection refused");
    }

    [Fact]
    public async Task Missing_database_is_named()
    {
        _cluster.Environment["Database__ConnectionString"] = _cluster.DatabaseConnectionString.Replace(_cluster.Name, "no_such_db", StringComparison.Ordinal);

        (int code, ClusterProcess p) = await _cluster.RunCoordinatorAsync(s_deadline, "db", "migrate", "--cluster");

        ShouldBeOneClearLine(p, code, "no_such_db", "does not exist");
    }

    [Fact]
    public async Task Malformed_connection_string_is_refused_before_connecting()
    {
        _cluster.Environment["Database__ConnectionString"] = "Host=127.0.0.1;Port=notaport";

        (int code, ClusterProcess p) = await _cluster.RunCoordinatorAsync(s_deadline, "workers", "--cluster");

        ShouldBeOneClearLine(p, code, "Database:ConnectionString is not a valid PostgreSQL connection string");
    }

    [Fact]
    public async Task Selftest_against_an_unmigrated_database_says_to_migrate()
    {
        (int code, ClusterProcess p) = await _cluster.RunCoordinatorAsync(s_deadline, "selftest", "--cluster");

        ShouldBeOneClearLine(p, code, "pending migration", "coordinator db migrate");
    }

    [Theory]
    [InlineData("selftest", "--no-such-option")]
    [InlineData("no-such-command")]
    [InlineData("selftest", "--embedded", "--cluster")]
    [InlineData("selftest", "--timeout", "0")]
    public async Task Bad_usage_exits_with_code_2_and_one_line(params string[] args)
    {
        (int code, ClusterProcess p) = await _cluster.RunCoordinatorAsync(s_deadline, args);

        ShouldBeOneClearLine(p, code);
    }

    [Fact]
    public async Task A_cuda_worker_on_a_cpu_build_fails_with_one_clear_line()
    {
        ClusterProcess worker = _cluster.Worker("--device", "cuda");

        int code = await worker.WaitForExitAsync(s_deadline);

        code.ShouldBe(2, worker.Describe());
        worker.StandardError.Trim().ShouldStartWith("gpu-worker: error: --device cuda: no CUDA device is usable");
        worker.StandardError.Trim().Split('\n').Length.ShouldBe(1);
    }

    [Fact]
    public async Task A_worker_whose_broker_is_down_retries_with_backoff_and_says_so_until_stopped()
    {
        int port = ClosedPort();
        _cluster.Environment["RabbitMq__Port"] = port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        ClusterProcess worker = _cluster.Worker("--device", "cpu");

        await Eventually.WaitAsync(
            () => Task.FromResult(worker.Lines.Count(l => l.Contains($"127.0.0.1:{port}", StringComparison.Ordinal) && l.Contains("retrying in", StringComparison.Ordinal)) >= 2),
            s_deadline, "two retry messages from the worker");
        worker.HasExited.ShouldBeFalse();

        worker.Terminate();
        (await worker.WaitForExitAsync(s_deadline)).ShouldBe(0, worker.Describe());
    }
}
