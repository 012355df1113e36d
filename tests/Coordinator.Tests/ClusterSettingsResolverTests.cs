using Cluster.Hosting;
using Cluster.Storage.Database;
using Microsoft.Extensions.Configuration;
using Shouldly;

namespace Cluster.Coordinator.Tests;

public sealed class ClusterSettingsResolverTests
{
    private static IConfiguration Config(params (string Key, string Value)[] values) =>
        new ConfigurationBuilder()
            .AddInMemoryCollection(values.Select(v => new KeyValuePair<string, string?>(v.Key, v.Value)))
            .Build();

    [Fact]
    public void Without_a_broker_the_default_is_embedded_with_sqlite_under_the_storage_root()
    {
        ClusterRuntimeSettings settings = ClusterSettingsResolver.Resolve(Config(("Cluster:StorageRoot", "/tmp/store")));

        settings.Mode.ShouldBe(RuntimeMode.Embedded);
        settings.DatabaseProvider.ShouldBe(DatabaseProvider.Sqlite);
        settings.DatabaseConnectionString.ShouldBe("Data Source=/tmp/store/cluster.db");
    }

    [Fact]
    public void A_configured_broker_means_cluster_mode_with_postgres()
    {
        ClusterRuntimeSettings settings = ClusterSettingsResolver.Resolve(Config(
            ("RabbitMq:Host", "10.1.2.3"),
            ("RabbitMq:Port", "5673"),
            ("Database:ConnectionString", "Host=db;Port=5432;Database=cluster;Username=cluster")));

        settings.Mode.ShouldBe(RuntimeMode.Cluster);
        settings.RabbitMq.Describe().ShouldBe("RabbitMQ at 10.1.2.3:5673 (virtual host '/')");
        settings.DatabaseProvider.ShouldBe(DatabaseProvider.Postgres);
    }

    [Fact]
    public void The_embedded_flag_wins_over_a_configured_broker()
    {
        ClusterRuntimeSettings settings = ClusterSettingsResolver.Resolve(Config(("RabbitMq:Host", "10.1.2.3")), RuntimeMode.Embedded);

        settings.Mode.ShouldBe(RuntimeMode.Embedded);
        settings.DatabaseProvider.ShouldBe(DatabaseProvider.Sqlite);
    }

    [Fact]
    public void Cluster_mode_without_a_broker_names_the_setting_to_set()
    {
        var error = Should.Throw<ClusterConfigurationException>(() => ClusterSettingsResolver.Resolve(Config(), RuntimeMode.Cluster));

        error.Message.ShouldContain("RabbitMq__Host");
    }

    [Fact]
    public void Cluster_mode_without_a_database_names_the_setting_to_set()
    {
        var error = Should.Throw<ClusterConfigurationException>(() => ClusterSettingsResolver.Resolve(Config(("RabbitMq:Host", "h"))));

        error.Message.ShouldContain("Database__ConnectionString");
    }

    [Fact]
    public void Malformed_connection_string_is_one_line_that_does_not_echo_the_secret()
    {
        var error = Should.Throw<ClusterConfigurationException>(() => ClusterSettingsResolver.Resolve(Config(
            ("RabbitMq:Host", "h"), ("Database:ConnectionString", "Host=db;Password=hunter2;Bogus Key=1"))));

        error.Message.ShouldStartWith("Database:ConnectionString is not a valid PostgreSQL connection string");
        error.Message.ShouldNotContain("hunter2");
        error.Message.ShouldNotContain('\n');
    }

    [Theory]
    [InlineData("Cluster:Mode", "sideways", "Cluster:Mode 'sideways' is not one of: embedded, cluster, auto.")]
    [InlineData("Database:Provider", "oracle", "Database:Provider 'oracle' is not one of: postgres, sqlite.")]
    [InlineData("RabbitMq:Port", "70000", "RabbitMq:Port 70000 is not a TCP port (1-65535).")]
    [InlineData("RabbitMq:HeartbeatSeconds", "-1", "RabbitMq:HeartbeatSeconds -1 is not a heartbeat interval (0 for none, or 1-65535 seconds).")]
    public void Bad_values_are_named_with_the_choices(string key, string value, string message)
    {
        var error = Should.Throw<ClusterConfigurationException>(() => ClusterSettingsResolver.Resolve(Config(
            ("RabbitMq:Host", "h"), ("Database:ConnectionString", "Host=db"), (key, value))));

        error.Message.ShouldBe(message);
    }

    [Fact]
    public void Tls_files_that_are_missing_not_certificates_or_set_without_tls_are_named_in_one_line()
    {
        ClusterConfigurationException Resolve(params (string, string)[] tls) => Should.Throw<ClusterConfigurationException>(() =>
            ClusterSettingsResolver.Resolve(Config([("RabbitMq:Host", "h"), ("Database:ConnectionString", "Host=db"), .. tls])));

        string missing = Path.Combine(Path.GetTempPath(), $"no-such-ca-{Guid.NewGuid():N}.pem");
        Resolve(("RabbitMq:UseTls", "true"), ("RabbitMq:TlsCaFile", missing)).Message
            .ShouldBe($"RabbitMq:TlsCaFile: file '{missing}' does not exist.");

        string notPem = Path.GetTempFileName();
        try
        {
            File.WriteAllText(notPem, "password=hunter2\n");
            ClusterConfigurationException error = Resolve(("RabbitMq:UseTls", "true"), ("RabbitMq:TlsCaFile", notPem));
            error.Message.ShouldBe($"RabbitMq:TlsCaFile: '{notPem}' holds no PEM certificate.");
            error.Message.ShouldNotContain("hunter2");
        }
        finally
        {
            File.Delete(notPem);
        }

        Resolve(("RabbitMq:TlsCaFile", missing)).Message.ShouldStartWith("RabbitMq:TlsCaFile or RabbitMq:TlsClientCertificate is set but RabbitMq:UseTls is not");
        Resolve(("RabbitMq:UseTls", "true"), ("RabbitMq:TlsClientCertificate", missing)).Message
            .ShouldBe($"RabbitMq:TlsClientCertificate: file '{missing}' does not exist.");
        ClusterSettingsResolver.Resolve(Config(("RabbitMq:Host", "h"), ("Database:ConnectionString", "Host=db"), ("RabbitMq:UseTls", "true")))
            .RabbitMq.UseTls.ShouldBeTrue("TLS with the system's roots needs no file");
    }
}
