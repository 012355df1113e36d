using Cluster.Hosting;
using Cluster.IntegrationTests.Support;
using Npgsql;
using Shouldly;

namespace Cluster.IntegrationTests;

/// <summary>
/// The workers' identities hold what a worker needs and no more: the PostgreSQL role `db migrate --worker-role`
/// grants reads and the workers' own records but no schema changes and no sweep state; the RabbitMQ user reaches its
/// virtual host only. (Every other integration test runs its workers as these identities.)
/// </summary>
public sealed class LeastPrivilegeTests : IAsyncLifetime
{
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(3);
    private IsolatedCluster _cluster = null!;

    public async Task InitializeAsync() => _cluster = await IsolatedCluster.CreateAsync();

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    private async Task<string?> AsWorkerAsync(string sql)
    {
        string connection = _cluster.WorkerEnvironment["Database__ConnectionString"];
        await using var db = new NpgsqlConnection(connection);
        await db.OpenAsync();
        await using var command = new NpgsqlCommand(sql, db);
        try
        {
            await command.ExecuteNonQueryAsync();
            return null;
        }
        catch (PostgresException e)
        {
            return e.SqlState;
        }
    }

    [Fact]
    public async Task The_worker_role_reads_and_records_results_but_cannot_change_the_schema_or_the_sweeps()
    {
        await _cluster.MigrateAsync(s_deadline);

        (await AsWorkerAsync("SELECT count(*) FROM sweeps")).ShouldBeNull();
        (await AsWorkerAsync("UPDATE segments SET attempts = attempts WHERE false")).ShouldBeNull();
        (await AsWorkerAsync("DELETE FROM epoch_metrics WHERE false")).ShouldBeNull();
        (await AsWorkerAsync("INSERT INTO selftest_runs (job_id, worker_id, device, torch_version, output_shape, checksum, milliseconds, completed_at) "
            + "VALUES (gen_random_uuid(), 'w', 'cpu', 't', '[1]', 0, 0, now())")).ShouldBeNull();

        // 42501: insufficient privilege (42501 is also what PostgreSQL answers a non-owner's DROP and ALTER).
        (await AsWorkerAsync("UPDATE sweeps SET name = name WHERE false")).ShouldBe(PostgresErrorCodes.InsufficientPrivilege);
        (await AsWorkerAsync("DELETE FROM trials WHERE false")).ShouldBe(PostgresErrorCodes.InsufficientPrivilege);
        (await AsWorkerAsync("DELETE FROM segments WHERE false")).ShouldBe(PostgresErrorCodes.InsufficientPrivilege);
        (await AsWorkerAsync("CREATE TABLE intruder (x int)")).ShouldBe(PostgresErrorCodes.InsufficientPrivilege);
        (await AsWorkerAsync("DROP TABLE segments")).ShouldBe(PostgresErrorCodes.InsufficientPrivilege);
        (await AsWorkerAsync("ALTER TABLE trials ADD COLUMN x int")).ShouldBe(PostgresErrorCodes.InsufficientPrivilege);

        // Granting again changes nothing and fails nothing.
        await _cluster.MigrateAsync(s_deadline);
        (await AsWorkerAsync("SELECT count(*) FROM trials")).ShouldBeNull();
    }

    [Theory]
    [InlineData("no_such_role", "--worker-role no_such_role: no such role in PostgreSQL")]
    [InlineData("Bad;Name", "worker role 'Bad;Name' must be a plain PostgreSQL name")]
    public async Task A_worker_role_that_does_not_exist_or_is_not_a_plain_name_is_one_line_and_exit_code_2(string role, string message)
    {
        (int code, ClusterProcess migrate) = await _cluster.RunCoordinatorAsync(s_deadline, "db", "migrate", "--worker-role", role);

        code.ShouldBe(2, migrate.Describe());
        migrate.StandardError.Trim().Split('\n').ShouldHaveSingleItem().ShouldStartWith($"coordinator: error: {message}");
    }

    [Fact]
    public async Task The_worker_user_reaches_its_virtual_host_and_no_other()
    {
        RabbitMqOptions As(string virtualHost) => new()
        {
            Host = TestServers.RabbitHost,
            Port = TestServers.RabbitPort,
            VirtualHost = virtualHost,
            Username = _cluster.WorkerRole,
            Password = _cluster.WorkerPassword,
        };

        (await ConnectivityCheck.ProbeRabbitMqAsync(As(_cluster.Name), CancellationToken.None)).ShouldBeNull();
        string? refused = await ConnectivityCheck.ProbeRabbitMqAsync(As("/"), CancellationToken.None);
        refused.ShouldNotBeNull().ShouldContain(_cluster.WorkerRole);
    }
}
