using Serilog;
using Serilog.Events;
using Serilog.Formatting.Compact;

namespace Cluster.Hosting;

/// <summary>
/// Serilog for every process: structured events with job and worker ids as properties (pushed per message);
/// JSON lines on stdout for services in the cluster, readable text on stderr for the CLI.
/// </summary>
public static class ClusterLogging
{
    public static LoggerConfiguration Configure(
        LoggerConfiguration logger, bool json, bool verbose, bool toStdErr, LogEventLevel minimum = LogEventLevel.Information)
    {
        logger = logger
            .MinimumLevel.Is(verbose ? LogEventLevel.Debug : minimum)
            .MinimumLevel.Override("Microsoft", LogEventLevel.Warning)
            .MinimumLevel.Override("MassTransit", verbose ? LogEventLevel.Information : LogEventLevel.Warning)
            .Enrich.FromLogContext()
            .Enrich.WithProperty("Process", AppDomain.CurrentDomain.FriendlyName);
        LogEventLevel stdErrFrom = toStdErr ? LogEventLevel.Verbose : LogEventLevel.Fatal + 1;
        return json
            ? logger.WriteTo.Console(new RenderedCompactJsonFormatter(), standardErrorFromLevel: stdErrFrom)
            : logger.WriteTo.Console(
                outputTemplate: "{Timestamp:HH:mm:ss} {Level:u3} {Message:lj}{NewLine}{Exception}",
                standardErrorFromLevel: stdErrFrom);
    }
}
