using Cluster.Coordinator.Cli;

namespace Cluster.Coordinator.Tests.Cli;

/// <summary>
/// Runs `coordinator ARGS` in this process with stdout and stderr captured. Console redirection is process-wide, so
/// tests using it belong to <see cref="ConsoleCollection"/> (not run in parallel).
/// </summary>
internal static class InProcessCli
{
    public static async Task<(int ExitCode, string Output, string Error)> RunAsync(params string[] args)
    {
        var (output, error) = (new StringWriter(), new StringWriter());
        var (stdout, stderr) = (Console.Out, Console.Error);
        Console.SetOut(output);
        Console.SetError(error);
        try
        {
            int exitCode = await CoordinatorCli.RunAsync(args);
            return (exitCode, output.ToString(), error.ToString());
        }
        finally
        {
            Console.SetOut(stdout);
            Console.SetError(stderr);
        }
    }
}
