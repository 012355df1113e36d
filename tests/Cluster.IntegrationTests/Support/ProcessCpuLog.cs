using System.Diagnostics;
using System.Globalization;

namespace Cluster.IntegrationTests.Support;

/// <summary>
/// Where the integration tests' CPU goes, when $CLUSTER_IT_CPU_LOG names a file: each child process's CPU time (its own
/// and its waited children's, such as kernel probes), sampled from /proc every 200 ms until it exits, is appended there
/// as one tab-separated line (test class, command line, wall s, user+system s). Off by default; it changes nothing a
/// test checks.
/// </summary>
internal static class ProcessCpuLog
{
    private static readonly string? s_path = System.Environment.GetEnvironmentVariable("CLUSTER_IT_CPU_LOG");
    // /proc reports CPU time in clock ticks: USER_HZ, which Linux fixes at 100 for user space on x86-64 and arm64.
    private const double TicksPerSecond = 100;
    private static readonly object s_gate = new();

    public static void Watch(ClusterProcess process)
    {
        if (string.IsNullOrEmpty(s_path))
        {
            return;
        }
        string test = new StackTrace().GetFrames().Select(f => f.GetMethod()?.DeclaringType).Where(t => t?.Namespace == "Cluster.IntegrationTests")
            .Select(t => t!.DeclaringType ?? t).Select(t => t.Name.Split('<')[0]).FirstOrDefault(n => n.Length > 0) ?? "?";
        _ = Task.Run(async () =>
        {
            var clock = Stopwatch.StartNew();
            double cpu = 0;
            string stat = $"/proc/{process.Id}/stat";
            while (true)
            {
                try
                {
                    string text = await File.ReadAllTextAsync(stat);
                    string[] fields = text[(text.LastIndexOf(')') + 2)..].Split(' ');
                    // utime, stime, cutime, cstime are fields 14-17 (1-based); after the name, index 11-14.
                    if (fields[0] == "Z")
                    {
                        break;
                    }
                    cpu = Enumerable.Range(11, 4).Sum(i => long.Parse(fields[i], CultureInfo.InvariantCulture)) / TicksPerSecond;
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    break;
                }
                await Task.Delay(200);
            }
            string line = string.Create(CultureInfo.InvariantCulture, $"{test}\t{process.CommandLine}\t{clock.Elapsed.TotalSeconds:F1}\t{cpu:F1}\n");
            lock (s_gate)
            {
                File.AppendAllText(s_path!, line);
            }
        });
    }
}
