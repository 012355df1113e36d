namespace Cluster.IntegrationTests.Support;

/// <summary>The throwaway servers scripts/test.sh started, from its CLUSTER_TEST_* environment variables.</summary>
public static class TestServers
{
    public static string RabbitHost => Require("CLUSTER_TEST_RABBITMQ_HOST");

    public static int RabbitPort => int.Parse(Require("CLUSTER_TEST_RABBITMQ_PORT"), System.Globalization.CultureInfo.InvariantCulture);

    public static string RabbitUser => Require("CLUSTER_TEST_RABBITMQ_USER");

    public static string RabbitPassword => Require("CLUSTER_TEST_RABBITMQ_PASSWORD");

    public static int RabbitManagementPort =>
        int.Parse(Require("CLUSTER_TEST_RABBITMQ_MANAGEMENT_PORT"), System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>Superuser connection to the server's `postgres` database.</summary>
    public static string PostgresAdmin => Require("CLUSTER_TEST_POSTGRES");

    private static string Require(string name) =>
        Environment.GetEnvironmentVariable(name) is { Length: > 0 } value
            ? value
            : throw new InvalidOperationException(
                $"{name} is not set: integration tests need the RabbitMQ and PostgreSQL servers that scripts/test.sh starts (run the tests with scripts/test.sh).");
}
