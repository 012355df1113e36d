using System.Text;

namespace Cluster.Coordinator.Orchestration;

/// <summary>
/// Why a job is in the error queue, in one line, from its headers: MassTransit's fault headers when a worker's retries ran
/// out (the exception it kept throwing), the broker's dead-letter headers when the shared queue's delivery limit did (every
/// worker that took it stopped before acknowledging it). Header values arrive as AMQP strings (bytes) or as text,
/// depending on who reads them: the bus or a plain client (`coordinator errors`).
/// </summary>
public static class DeadJobReason
{
    public const string FaultExceptionType = "MT-Fault-ExceptionType";
    public const string FaultMessage = "MT-Fault-Message";
    public const string FaultRetryCount = "MT-Fault-RetryCount";
    public const string FaultTimestamp = "MT-Fault-Timestamp";
    public const string FirstDeathReason = "x-first-death-reason";

    /// <summary>Every header a failure adds to the job (what a requeue takes off again).</summary>
    public static bool IsFailureHeader(string name) =>
        name.StartsWith("MT-Fault-", StringComparison.OrdinalIgnoreCase)
        || name.StartsWith("MT-Reason", StringComparison.OrdinalIgnoreCase)
        || name.StartsWith("MT-Host-", StringComparison.OrdinalIgnoreCase)
        || name.StartsWith("x-death", StringComparison.OrdinalIgnoreCase)
        || name.StartsWith("x-first-death-", StringComparison.OrdinalIgnoreCase)
        || name.StartsWith("x-last-death-", StringComparison.OrdinalIgnoreCase)
        || name.Equals("x-delivery-count", StringComparison.OrdinalIgnoreCase);

    public static string Describe(Func<string, object?> header, int deliveryLimit)
    {
        ArgumentNullException.ThrowIfNull(header);
        string? exceptionType = Text(header(FaultExceptionType));
        if (exceptionType is not null)
        {
            string message = Text(header(FaultMessage)) ?? "(no message)";
            string? retries = Text(header(FaultRetryCount));
            // No retries: a failure the worker knows would recur (a job it refuses), sent to the error queue at once.
            return $"{ShortName(exceptionType)}: {OneLine(message)}" + (retries is null or "0" ? "" : $" (given up after {retries} retries)");
        }
        string? deadLetter = Text(header(FirstDeathReason));
        return deadLetter switch
        {
            "delivery_limit" => $"reached the delivery limit ({deliveryLimit} deliveries): every worker that took it stopped before finishing it (killed, out of memory or crashed)",
            null => "moved to the error queue without a recorded reason",
            _ => $"dead-lettered by the broker ({deadLetter})",
        };
    }

    /// <summary>The header as text: AMQP long strings arrive as bytes through the plain client.</summary>
    public static string? Text(object? value) => value switch
    {
        null => null,
        string s => s,
        byte[] bytes => Encoding.UTF8.GetString(bytes),
        ReadOnlyMemory<byte> memory => Encoding.UTF8.GetString(memory.Span),
        _ => Convert.ToString(value, System.Globalization.CultureInfo.InvariantCulture),
    };

    private static string ShortName(string exceptionType) =>
        exceptionType.LastIndexOf('.') is int dot and >= 0 ? exceptionType[(dot + 1)..] : exceptionType;

    private static string OneLine(string text) =>
        string.Join(' ', text.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
}
