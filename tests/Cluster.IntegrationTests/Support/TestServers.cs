using Cluster.TestSupport;

namespace Cluster.IntegrationTests.Support;

/// <summary>The throwaway servers scripts/test.sh started, from its CLUSTER_TEST_* environment variables.</summary>
public static class TestServers
{
    public static string RabbitHost => Require("CLUSTER_TEST_RABBITMQ_HOST");

    public static int RabbitPort => int.Parse(Require("CLUSTER_TEST_RABBITMQ_PORT"), System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>The broker's AMQPS listener; its certificate names 127.0.0.1 and localhost, signed by <see cref="RabbitTlsCa"/>.</summary>
    public static int RabbitTlsPort => int.Parse(Require("CLUSTER_TEST_RABBITMQ_TLS_PORT"), System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>PEM of the throwaway CA test-servers.sh made for the broker (trusted nowhere else).</summary>
    public static string RabbitTlsCa => Require("CLUSTER_TEST_RABBITMQ_TLS_CA");

    /// <summary>PKCS#12 client certificate signed by <see cref="RabbitTlsCa"/>: the AMQPS listener refuses clients without one.</summary>
    public static string RabbitTlsClientCertificate => Require("CLUSTER_TEST_RABBITMQ_TLS_CLIENT_CERT");

    public static string RabbitTlsClientPassword => Require("CLUSTER_TEST_RABBITMQ_TLS_CLIENT_PASSWORD");

    public static string RabbitUser => Require("CLUSTER_TEST_RABBITMQ_USER");

    public static string RabbitPassword => Require("CLUSTER_TEST_RABBITMQ_PASSWORD");

    public static int RabbitManagementPort =>
        int.Parse(Require("CLUSTER_TEST_RABBITMQ_MANAGEMENT_PORT"), System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>A rabbitmqctl bound to the test node (it runs as the broker's user when the tests run as root).</summary>
    public static string RabbitMqCtl => Require("CLUSTER_TEST_RABBITMQCTL");

    /// <summary>
    /// Crashes one of the shared servers ("rabbitmq" or "postgres") and starts it again on the same ports and data; returns
    /// once it serves again. Every test of the run uses these servers: only tests in <see cref="ServerFaultsCollection"/>,
    /// which runs alone, may call it.
    /// </summary>
    public static async Task CrashRestartAsync(string server)
    {
        ExternalCommand.Result run = await ExternalCommand.RunAsync("bash",
            [Path.Combine(RepoPaths.Root, "scripts", "test-servers.sh"), "crash-restart", server, Require("CLUSTER_TEST_SERVERS_DIR")],
            TimeSpan.FromMinutes(5));
        if (run.ExitCode != 0)
        {
            throw new InvalidOperationException($"crash-restart {server} failed (exit {run.ExitCode}):\n{run.Output}\n{run.Error}");
        }
        // Pooled connections to the old server are dead: the tests' own next connections must be new ones.
        Npgsql.NpgsqlConnection.ClearAllPools();
    }

    /// <summary>Superuser connection to the server's `postgres` database.</summary>
    public static string PostgresAdmin => Require("CLUSTER_TEST_POSTGRES");

    private static string Require(string name) =>
        Environment.GetEnvironmentVariable(name) is { Length: > 0 } value
            ? value
            : throw new InvalidOperationException(
                $"{name} is not set: integration tests need the RabbitMQ and PostgreSQL servers that scripts/test.sh starts (run the tests with scripts/test.sh).");
}

/// <summary>Tests that crash the shared servers: they run alone, after every parallel test of the assembly.</summary>
[CollectionDefinition(nameof(ServerFaultsCollection), DisableParallelization = true)]
public sealed class ServerFaultsCollection;
