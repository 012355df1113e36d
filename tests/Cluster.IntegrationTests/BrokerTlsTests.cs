using System.Globalization;
using System.Text.Json;
using Cluster.IntegrationTests.Support;
using Shouldly;

namespace Cluster.IntegrationTests;

/// <summary>
/// RabbitMq:UseTls against the test broker's real AMQPS listener (a throwaway CA's certificate for 127.0.0.1 and
/// localhost, and mutual TLS: the listener requires a client certificate the same CA signed): a worker and the CLI
/// complete a job over TLS with the client certificate; no client certificate, an untrusted CA, a wrong server name,
/// or TLS and plain AMQP swapped are each one line naming the setting to fix, exit code 2.
/// </summary>
public sealed class BrokerTlsTests : IAsyncLifetime
{
    private static readonly TimeSpan s_deadline = TimeSpan.FromMinutes(3);
    private IsolatedCluster _cluster = null!;

    public async Task InitializeAsync()
    {
        _cluster = await IsolatedCluster.CreateAsync();
        await _cluster.MigrateAsync(s_deadline);
    }

    public async Task DisposeAsync() => await _cluster.DisposeAsync();

    private void UseTls(string? caFile, string? serverName = null, bool clientCertificate = true)
    {
        _cluster.Environment["RabbitMq__Port"] = TestServers.RabbitTlsPort.ToString(CultureInfo.InvariantCulture);
        _cluster.Environment["RabbitMq__UseTls"] = "true";
        if (clientCertificate)
        {
            _cluster.Environment["RabbitMq__TlsClientCertificate"] = TestServers.RabbitTlsClientCertificate;
            _cluster.Environment["RabbitMq__TlsClientCertificatePassword"] = TestServers.RabbitTlsClientPassword;
        }
        else
        {
            _cluster.Environment.Remove("RabbitMq__TlsClientCertificate");
            _cluster.Environment.Remove("RabbitMq__TlsClientCertificatePassword");
        }
        if (caFile is not null)
        {
            _cluster.Environment["RabbitMq__TlsCaFile"] = caFile;
        }
        if (serverName is not null)
        {
            _cluster.Environment["RabbitMq__TlsServerName"] = serverName;
        }
    }

    private static string OneErrorLine(ClusterProcess process, int exitCode)
    {
        exitCode.ShouldBe(2, process.Describe());
        string line = process.StandardError.Split('\n', StringSplitOptions.RemoveEmptyEntries).ShouldHaveSingleItem(process.Describe());
        line.ShouldStartWith("coordinator: error: ");
        return line;
    }

    [Fact]
    public async Task A_worker_and_the_cli_complete_a_job_over_mutual_tls_with_the_brokers_private_ca()
    {
        UseTls(TestServers.RabbitTlsCa);
        string workerId = "tls-worker-" + _cluster.Name;
        _cluster.Worker("--device", "cpu", "--id", workerId);

        (int code, ClusterProcess selftest) = await _cluster.RunCoordinatorAsync(s_deadline, "selftest", "--cluster", "--format", "json");

        code.ShouldBe(0, _cluster.DescribeProcesses());
        using JsonDocument result = JsonDocument.Parse(selftest.StandardOutput);
        result.RootElement.GetProperty("passed").GetBoolean().ShouldBeTrue();
        result.RootElement.GetProperty("workerId").GetString().ShouldBe(workerId);
    }

    [Fact]
    public async Task Without_the_private_ca_or_under_another_server_name_the_handshake_is_refused_in_one_line()
    {
        UseTls(caFile: null);
        (int code, ClusterProcess untrusted) = await _cluster.RunCoordinatorAsync(s_deadline, "selftest", "--cluster");
        string line = OneErrorLine(untrusted, code);
        line.ShouldContain($"RabbitMQ at 127.0.0.1:{TestServers.RabbitTlsPort} over TLS");
        line.ShouldContain("TLS handshake failed");

        UseTls(TestServers.RabbitTlsCa, serverName: "broker.example.org");
        (code, ClusterProcess misnamed) = await _cluster.RunCoordinatorAsync(s_deadline, "selftest", "--cluster");
        OneErrorLine(misnamed, code).ShouldContain("not valid for 'broker.example.org'");

        UseTls(TestServers.RabbitTlsCa, clientCertificate: false);
        (code, ClusterProcess anonymous) = await _cluster.RunCoordinatorAsync(s_deadline, "selftest", "--cluster");
        OneErrorLine(anonymous, code).ShouldContain("RabbitMq:TlsClientCertificate");
    }

    [Fact]
    public async Task Plain_amqp_to_the_tls_port_and_a_ca_file_that_is_not_a_certificate_are_one_line_each()
    {
        _cluster.Environment["RabbitMq__Port"] = TestServers.RabbitTlsPort.ToString(CultureInfo.InvariantCulture);
        (int code, ClusterProcess plain) = await _cluster.RunCoordinatorAsync(s_deadline, "selftest", "--cluster");
        OneErrorLine(plain, code).ShouldContain($"RabbitMQ at 127.0.0.1:{TestServers.RabbitTlsPort} (virtual host");
        plain.StandardError.ShouldContain("set RabbitMq:UseTls=true");

        Directory.CreateDirectory(_cluster.StorageRoot);
        string notPem = Path.Combine(_cluster.StorageRoot, "not-a-ca.pem");
        await File.WriteAllTextAsync(notPem, "secret-token-line\n");
        UseTls(notPem);
        (code, ClusterProcess badCa) = await _cluster.RunCoordinatorAsync(s_deadline, "selftest", "--cluster");
        string line = OneErrorLine(badCa, code);
        line.ShouldContain("RabbitMq:TlsCaFile");
        line.ShouldContain(notPem);
        line.ShouldNotContain("secret-token-line");
    }
}
