using System.Diagnostics;

namespace Cluster.TestSupport;

/// <summary>A program the tests run to completion (mount, rabbitmqctl, test-servers.sh), its output captured.</summary>
public static class ExternalCommand
{
    public sealed record Result(int ExitCode, string Output, string Error);

    public static async Task<Result> RunAsync(string program, IEnumerable<string> args, TimeSpan timeout)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args)
        {
            start.ArgumentList.Add(a);
        }
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        Task<string> error = process.StandardError.ReadToEndAsync();
        using var deadline = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(deadline.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{program} {string.Join(' ', args)} did not exit within {timeout.TotalSeconds:F0} s");
        }
        return new Result(process.ExitCode, await output, await error);
    }

    /// <summary>For the few callers that cannot await (an attribute's constructor).</summary>
    public static Result Run(string program, params string[] args) =>
        RunAsync(program, args, TimeSpan.FromMinutes(2)).GetAwaiter().GetResult();
}
