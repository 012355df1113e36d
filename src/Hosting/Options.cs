using System.ComponentModel.DataAnnotations;
using Cluster.Storage.Database;

namespace Cluster.Hosting;

/// <summary>Where the cluster runs: in one process with no servers, or against RabbitMQ and PostgreSQL.</summary>
public enum RuntimeMode
{
    Embedded,
    Cluster,
}

/// <summary>Section "Cluster": the mode and the shared storage root.</summary>
public sealed class ClusterOptions
{
    public const string SectionName = "Cluster";

    /// <summary>"embedded", "cluster", or empty: cluster when a RabbitMQ host is configured, else embedded.</summary>
    public string? Mode { get; set; }

    /// <summary>The shared storage root (a ReadWriteMany volume in Kubernetes; a local folder when embedded).</summary>
    public string StorageRoot { get; set; } = ".cluster";
}

/// <summary>Section "RabbitMq". Credentials come from the environment (RabbitMq__Password) or a secret.</summary>
public sealed class RabbitMqOptions
{
    public const string SectionName = "RabbitMq";

    public string? Host { get; set; }

    [Range(1, 65535)]
    public int Port { get; set; } = 5672;

    public string VirtualHost { get; set; } = "/";

    public string Username { get; set; } = "guest";

    public string Password { get; set; } = "guest";

    /// <summary>
    /// The AMQP heartbeat asked of the broker, in seconds (0: none). A process that stops answering (SIGSTOP, a hung
    /// driver, a frozen node) keeps its unacknowledged deliveries until the broker declares its connection dead after
    /// about two missed heartbeats; a consumer timeout alone does not return them, as the broker waits for the frozen
    /// client to confirm the channel's close. The client library's default of 60 s held a frozen worker's segment about
    /// 2.5 minutes (measured, LostWorkerTests); 20 s should bring that under a minute, and the test's 3 s to seconds.
    /// </summary>
    public int HeartbeatSeconds { get; set; } = 20;

    /// <summary>
    /// AMQP over TLS (AMQPS; the broker's TLS listener is usually port 5671, set <see cref="Port"/> to it). The broker's
    /// certificate must be valid for <see cref="TlsServerName"/> and chain to the system's trusted roots or to
    /// <see cref="TlsCaFile"/>; nothing is accepted on a policy error.
    /// </summary>
    public bool UseTls { get; set; }

    /// <summary>The name the broker's certificate must carry; default <see cref="Host"/>.</summary>
    public string? TlsServerName { get; set; }

    /// <summary>
    /// A PEM file of the certificate authority (or authorities) that signed the broker's certificate, trusted for the
    /// broker alone in addition to the system's roots: a private CA mounted from a secret.
    /// </summary>
    public string? TlsCaFile { get; set; }

    /// <summary>A client certificate (PKCS#12) for brokers that require mutual TLS; its password in <see cref="TlsClientCertificatePassword"/>.</summary>
    public string? TlsClientCertificate { get; set; }

    public string? TlsClientCertificatePassword { get; set; }

    public string Describe() => $"RabbitMQ at {Host}:{Port}{(UseTls ? " over TLS" : "")} (virtual host '{VirtualHost}')";
}

/// <summary>Section "Database". In cluster mode PostgreSQL; embedded, a SQLite file under the storage root.</summary>
public sealed class DatabaseOptions
{
    public const string SectionName = "Database";

    /// <summary>"postgres" or "sqlite"; empty: postgres in cluster mode, sqlite embedded.</summary>
    public string? Provider { get; set; }

    /// <summary>A Npgsql or SQLite connection string; embedded default: Data Source=&lt;storage root&gt;/cluster.db.</summary>
    public string? ConnectionString { get; set; }
}

/// <summary>Section "Worker": settings of a GPU worker process (or of the in-process worker when embedded).</summary>
public sealed class WorkerOptions
{
    public const string SectionName = "Worker";

    /// <summary>"cpu", "cuda" or "cuda:N".</summary>
    public string Device { get; set; } = "cpu";

    /// <summary>Stable id; default: host name, process id and a random suffix.</summary>
    public string? Id { get; set; }

    [Range(1, 3600)]
    public double HeartbeatSeconds { get; set; } = 5;

    /// <summary>
    /// Intra-op threads for libtorch, in each forward lane and for the rest of the process; 0: the lanes share the
    /// cores out, and the rest keeps libtorch's default (one per core).
    /// </summary>
    [Range(0, 1024)]
    public int TorchThreads { get; set; }

    /// <summary>
    /// Batches a CPU worker computes at once, each on its own cores (see LaneLayout); 0: 2 up to 8 cores, then one
    /// per 4 cores, at most 4. A GPU worker always computes one at a time.
    /// </summary>
    [Range(0, 64)]
    public int ForwardLanes { get; set; }

    /// <summary>
    /// Where the kernel check keeps its verdicts (per libtorch version and CPU); empty: $XDG_CACHE_HOME or
    /// ~/.cache/transfer-cluster/kernels. A node-local folder or the shared volume both work.
    /// </summary>
    public string? KernelCache { get; set; }

    /// <summary>
    /// MiB of cached activations a worker keeps in memory between jobs, so that the next trial of a frozen prefix on
    /// this worker trains without reading its feature set again (least recently used evicted first); -1: a quarter of
    /// the memory the process may use (the container's limit where it has one); 0: none.
    /// </summary>
    public long FeatureMemoryMiB { get; set; } = -1;

    /// <summary>
    /// Seconds a worker trains one segment: at an epoch boundary it ends the segment early when the epoch to come (as
    /// long as the longest so far) would end past this bound, and the coordinator sends the remaining epochs as the next
    /// segment. Keep RabbitMQ's consumer_timeout above it plus one epoch (the broker takes back a delivery held longer).
    /// 0: one epoch per segment; negative: no bound. The default suits RabbitMQ's default 30-minute consumer timeout.
    /// </summary>
    [Range(-1, 7 * 24 * 3600)]
    public double SegmentTimeLimitSeconds { get; set; } = 1200;

    /// <summary>
    /// Seconds between checks of a shared volume that a job found full or read-only: the job waits (holding its
    /// delivery, heartbeats going on) until a test write succeeds, then runs again; it is never failed for it.
    /// </summary>
    [Range(0.05, 3600)]
    public double StorageRetrySeconds { get; set; } = 15;

    /// <summary><see cref="FeatureMemoryMiB"/> in bytes, the default resolved.</summary>
    public long ResidentFeatureBytes() => FeatureMemoryMiB switch
    {
        < 0 => GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 4,
        _ => FeatureMemoryMiB * 1024 * 1024,
    };
}

/// <summary>The settings every process resolves once at start: mode, storage, bus and database.</summary>
public sealed record ClusterRuntimeSettings(
    RuntimeMode Mode,
    string StorageRoot,
    RabbitMqOptions RabbitMq,
    DatabaseProvider DatabaseProvider,
    string DatabaseConnectionString);
