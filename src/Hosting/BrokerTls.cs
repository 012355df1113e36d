using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using MassTransit;
using RabbitMQ.Client;

namespace Cluster.Hosting;

/// <summary>
/// TLS to the broker, the same for MassTransit's connections and the short-lived ones of the CLI (connectivity check,
/// error queue): TLS 1.2 or 1.3, the certificate's name checked against <see cref="RabbitMqOptions.TlsServerName"/>, and
/// its chain built to the system's roots or, for a private CA, to <see cref="RabbitMqOptions.TlsCaFile"/> alone
/// (custom root trust, so that CA is trusted for the broker and nothing else on the machine).
/// </summary>
public static class BrokerTls
{
    private const SslProtocols Protocols = SslProtocols.Tls12 | SslProtocols.Tls13;

    /// <summary>Fails with one line naming the setting when a TLS file is missing or not what it should be.</summary>
    public static void Validate(RabbitMqOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        bool anyTlsFile = !string.IsNullOrWhiteSpace(options.TlsCaFile) || !string.IsNullOrWhiteSpace(options.TlsClientCertificate);
        if (!options.UseTls)
        {
            if (anyTlsFile)
            {
                throw new ClusterConfigurationException("RabbitMq:TlsCaFile or RabbitMq:TlsClientCertificate is set but RabbitMq:UseTls is not: set RabbitMq:UseTls=true (and the broker's TLS port).");
            }
            return;
        }
        if (!string.IsNullOrWhiteSpace(options.TlsCaFile))
        {
            _ = LoadAuthorities(options.TlsCaFile);
        }
        if (!string.IsNullOrWhiteSpace(options.TlsClientCertificate) && !File.Exists(options.TlsClientCertificate))
        {
            throw new ClusterConfigurationException($"RabbitMq:TlsClientCertificate: file '{options.TlsClientCertificate}' does not exist.");
        }
    }

    /// <summary>For MassTransit's host configuration.</summary>
    public static void Configure(IRabbitMqHostConfigurator host, RabbitMqOptions options)
    {
        ArgumentNullException.ThrowIfNull(host);
        ArgumentNullException.ThrowIfNull(options);
        if (!options.UseTls)
        {
            return;
        }
        RemoteCertificateValidationCallback validate = Validator(options);
        host.UseSsl(ssl =>
        {
            ssl.Protocol = Protocols;
            ssl.ServerName = ServerName(options);
            ssl.CertificateValidationCallback = validate;
            if (!string.IsNullOrWhiteSpace(options.TlsClientCertificate))
            {
                ssl.CertificatePath = options.TlsClientCertificate;
                ssl.CertificatePassphrase = options.TlsClientCertificatePassword;
            }
        });
    }

    /// <summary>For a RabbitMQ.Client connection factory; disabled when TLS is off.</summary>
    public static SslOption Option(RabbitMqOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!options.UseTls)
        {
            return new SslOption { Enabled = false };
        }
        return new SslOption
        {
            Enabled = true,
            Version = Protocols,
            ServerName = ServerName(options),
            CertificateValidationCallback = Validator(options),
            CertPath = options.TlsClientCertificate ?? "",
            CertPassphrase = options.TlsClientCertificatePassword ?? "",
        };
    }

    private static string ServerName(RabbitMqOptions options) =>
        string.IsNullOrWhiteSpace(options.TlsServerName) ? options.Host! : options.TlsServerName;

    /// <summary>
    /// The system's verdict, unless only the chain failed and a private CA is configured: then the chain is built again
    /// with that CA as the only root. A name mismatch or a missing certificate is never accepted.
    /// </summary>
    private static RemoteCertificateValidationCallback Validator(RabbitMqOptions options)
    {
        X509Certificate2Collection? authorities = string.IsNullOrWhiteSpace(options.TlsCaFile) ? null : LoadAuthorities(options.TlsCaFile);
        return (_, certificate, _, errors) =>
        {
            if (errors == SslPolicyErrors.None)
            {
                return true;
            }
            if (authorities is null || errors != SslPolicyErrors.RemoteCertificateChainErrors || certificate is null)
            {
                return false;
            }
            using var chain = new X509Chain();
            chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
            chain.ChainPolicy.CustomTrustStore.AddRange(authorities);
            chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
            using var leaf = new X509Certificate2(certificate);
            return chain.Build(leaf);
        };
    }

    private static X509Certificate2Collection LoadAuthorities(string path)
    {
        if (!File.Exists(path))
        {
            throw new ClusterConfigurationException($"RabbitMq:TlsCaFile: file '{path}' does not exist.");
        }
        var authorities = new X509Certificate2Collection();
        try
        {
            authorities.ImportFromPemFile(path);
        }
        catch (CryptographicException)
        {
            // The content is never shown: the path may be mistyped to a secret of another kind.
            throw new ClusterConfigurationException($"RabbitMq:TlsCaFile: '{path}' is not a PEM file of certificates.");
        }
        if (authorities.Count == 0)
        {
            throw new ClusterConfigurationException($"RabbitMq:TlsCaFile: '{path}' holds no PEM certificate.");
        }
        return authorities;
    }
}
