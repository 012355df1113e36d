using System.Net.Sockets;
using Cluster.Storage.Database;
using Microsoft.Data.Sqlite;
using Microsoft.Extensions.Logging;
using Npgsql;
using RabbitMQ.Client;
using RabbitMQ.Client.Exceptions;

namespace Cluster.Hosting;

/// <summary>
/// Checks that the broker and the database answer, before anything is started on them, and turns every
/// failure into one line naming host and port (and what went wrong) instead of a stack trace.
/// </summary>
public static class ConnectivityCheck
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Opens one AMQP connection and declares the job queues on it (<see cref="JobQueues.DeclareAsync"/>), so that nothing
    /// starts on a broker whose queues would refuse it; returns null when it works, else the reason. Queues declared
    /// otherwise by an older version throw <see cref="ClusterConfigurationException"/>: waiting would not fix them.
    /// </summary>
    public static async Task<string?> ProbeRabbitMqAsync(RabbitMqOptions options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(options);
        try
        {
            await using IConnection connection = await Connect(options, "cluster-connectivity-check").CreateConnectionAsync(cancellationToken);
            await JobQueues.DeclareAsync(connection, options.VirtualHost, cancellationToken);
            return null;
        }
        catch (Exception e) when (e is not ClusterConfigurationException && (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested))
        {
            return $"cannot connect to {options.Describe()}: {DescribeRabbitFailure(e, options)}";
        }
    }

    /// <summary>A connection factory for one short-lived AMQP connection (no recovery), named as the management UI shows it.</summary>
    public static ConnectionFactory Connect(RabbitMqOptions options, string clientName)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new ConnectionFactory
        {
            HostName = options.Host!,
            Port = options.Port,
            VirtualHost = options.VirtualHost,
            UserName = options.Username,
            Password = options.Password,
            RequestedConnectionTimeout = s_timeout,
            AutomaticRecoveryEnabled = false,
            ClientProvidedName = clientName,
            Ssl = BrokerTls.Option(options),
        };
    }

    /// <summary>Opens one database connection; returns null when it works, else the reason.</summary>
    public static async Task<string?> ProbeDatabaseAsync(ClusterDbContextFactory database, CancellationToken cancellationToken)
    {
        try
        {
            if (database.Provider == DatabaseProvider.Postgres)
            {
                var builder = new NpgsqlConnectionStringBuilder(database.ConnectionString)
                {
                    Timeout = (int)s_timeout.TotalSeconds,
                    Pooling = false,
                };
                await using var connection = new NpgsqlConnection(builder.ConnectionString);
                await connection.OpenAsync(cancellationToken);
            }
            else
            {
                string file = new SqliteConnectionStringBuilder(database.ConnectionString).DataSource;
                string? folder = Path.GetDirectoryName(Path.GetFullPath(file));
                if (!string.IsNullOrEmpty(folder))
                {
                    Directory.CreateDirectory(folder);
                }
                await using var connection = new SqliteConnection(database.ConnectionString);
                await connection.OpenAsync(cancellationToken);
            }
            return null;
        }
        catch (Exception e) when (e is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            return $"cannot connect to {database.Describe()}: {DescribeDatabaseFailure(e)}";
        }
    }

    /// <summary>For the CLI: fail at once with the clear line.</summary>
    public static async Task RequireAsync(Func<CancellationToken, Task<string?>> probe, CancellationToken cancellationToken)
    {
        string? problem = await probe(cancellationToken);
        if (problem is not null)
        {
            throw new ClusterConfigurationException(problem);
        }
    }

    /// <summary>For services: retry with exponential backoff (1 s doubling to 30 s), saying so in the log, until it works.</summary>
    public static async Task WaitUntilReachableAsync(
        Func<CancellationToken, Task<string?>> probe, ILogger logger, CancellationToken cancellationToken)
    {
        TimeSpan delay = TimeSpan.FromSeconds(1);
        while (true)
        {
            string? problem = await probe(cancellationToken);
            if (problem is null)
            {
                return;
            }
            logger.LogWarning("{Problem:l}; retrying in {DelaySeconds:F0} s", problem, delay.TotalSeconds);
            await Task.Delay(delay, cancellationToken);
            delay = TimeSpan.FromSeconds(Math.Min(30, delay.TotalSeconds * 2));
        }
    }

    private static string DescribeRabbitFailure(Exception e, RabbitMqOptions options)
    {
        for (Exception? x = e; x is not null; x = x.InnerException)
        {
            switch (x)
            {
                case AuthenticationFailureException:
                    return $"user '{options.Username}' was refused (wrong user name or password)";
                case OperationInterruptedException oi when oi.ShutdownReason?.ReplyCode == 530:
                    return $"access to virtual host '{options.VirtualHost}' refused (it does not exist or user '{options.Username}' has no permission)";
                case System.Security.Authentication.AuthenticationException:
                    return options.UseTls ? DescribeTlsFailure(options) : x.Message;
                case SocketException { SocketErrorCode: SocketError.ConnectionReset } se when !options.UseTls:
                    // What a TLS listener does to a plain AMQP greeting.
                    return $"{DescribeSocket(se)} (if port {options.Port} is the broker's TLS listener, set RabbitMq:UseTls=true)";
                case SocketException se:
                    return DescribeSocket(se);
                case TimeoutException:
                    return $"no answer within {s_timeout.TotalSeconds:F0} s";
            }
        }
        return e.GetBaseException().Message;
    }

    private static string DescribeTlsFailure(RabbitMqOptions options)
    {
        string name = (string.IsNullOrWhiteSpace(options.TlsServerName) ? options.Host : options.TlsServerName) ?? "";
        string line = $"the TLS handshake failed: the broker's certificate is not valid for '{name}' or not signed by a trusted CA (RabbitMq:TlsServerName, RabbitMq:TlsCaFile), or port {options.Port} is not its TLS listener";
        // A broker that requires mutual TLS ends the handshake with an alert the client sees as the same failure.
        return string.IsNullOrWhiteSpace(options.TlsClientCertificate)
            ? line + ", or the broker requires a client certificate (RabbitMq:TlsClientCertificate)"
            : line + ", or it refused the client certificate (RabbitMq:TlsClientCertificate)";
    }

    private static string DescribeDatabaseFailure(Exception e)
    {
        for (Exception? x = e; x is not null; x = x.InnerException)
        {
            switch (x)
            {
                case PostgresException pe when pe.SqlState is "28P01" or "28000":
                    return $"authentication failed ({pe.MessageText})";
                case PostgresException pe when pe.SqlState == "3D000":
                    return $"the database does not exist ({pe.MessageText})";
                case PostgresException pe:
                    return pe.MessageText;
                case SocketException se:
                    return DescribeSocket(se);
                case TimeoutException:
                    return $"no answer within {s_timeout.TotalSeconds:F0} s";
                case SqliteException sq:
                    return sq.Message;
            }
        }
        return e.GetBaseException().Message;
    }

    private static string DescribeSocket(SocketException e) => e.SocketErrorCode switch
    {
        SocketError.ConnectionRefused => "connection refused (is the server running, and on that port?)",
        SocketError.HostNotFound or SocketError.NoData or SocketError.TryAgain => "host name not found",
        SocketError.TimedOut => "connection timed out",
        SocketError.NetworkUnreachable or SocketError.HostUnreachable => "host unreachable",
        _ => e.Message,
    };
}
