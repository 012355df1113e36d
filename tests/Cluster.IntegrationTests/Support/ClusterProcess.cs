using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;
using Shouldly;

namespace Cluster.IntegrationTests.Support;

/// <summary>A `coordinator` or `gpu-worker` run as its own process, its output captured line by line.</summary>
public sealed class ClusterProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _stdout = new();
    private readonly StringBuilder _stderr = new();
    private readonly ConcurrentQueue<string> _lines = new();
    private readonly TaskCompletionSource _stdoutClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _stderrClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private ClusterProcess(string dll, IEnumerable<string> args, IReadOnlyDictionary<string, string> environment, string workingDirectory)
    {
        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory,
        };
        start.ArgumentList.Add(dll);
        foreach (string a in args)
        {
            start.ArgumentList.Add(a);
        }
        // The child sees only what the test gives it, not settings that happen to be in the runner's environment.
        foreach (string key in start.Environment.Keys.Where(k => k.StartsWith("RabbitMq__", StringComparison.Ordinal)
            || k.StartsWith("Database__", StringComparison.Ordinal) || k.StartsWith("Cluster__", StringComparison.Ordinal)).ToList())
        {
            start.Environment.Remove(key);
        }
        foreach ((string key, string value) in environment)
        {
            start.Environment[key] = value;
        }
        CommandLine = $"{Path.GetFileNameWithoutExtension(dll)} {string.Join(' ', args)}";
        _process = new Process { StartInfo = start, EnableRaisingEvents = true };
        _process.OutputDataReceived += (_, e) => Append(e.Data, _stdout, _stdoutClosed);
        _process.ErrorDataReceived += (_, e) => Append(e.Data, _stderr, _stderrClosed);
        _process.Start();
        Id = _process.Id;
        _process.StandardInput.Close();
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        ProcessCpuLog.Watch(this);
    }

    public string CommandLine { get; }

    public int Id { get; }

    public bool HasExited => _process.HasExited;

    public string StandardOutput
    {
        get
        {
            lock (_stdout)
            {
                return _stdout.ToString();
            }
        }
    }

    public string StandardError
    {
        get
        {
            lock (_stderr)
            {
                return _stderr.ToString();
            }
        }
    }

    /// <summary>Everything written so far, stdout and stderr interleaved as received.</summary>
    public IReadOnlyCollection<string> Lines => _lines.ToArray();

    public static ClusterProcess Coordinator(IsolatedCluster cluster, params string[] args) =>
        new(RepoPaths.CoordinatorDll, args, cluster.Environment, cluster.StorageRoot);

    public static ClusterProcess Worker(IsolatedCluster cluster, params string[] args) =>
        new(RepoPaths.WorkerDll, args, cluster.WorkerEnvironment, cluster.StorageRoot);

    public static ClusterProcess Start(string dll, IReadOnlyDictionary<string, string> environment, string workingDirectory, params string[] args) =>
        new(dll, args, environment, workingDirectory);

    /// <summary>Waits for the process to exit (and its output to be read), returns its exit code.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await _process.WaitForExitAsync(cts.Token);
            await Task.WhenAll(_stdoutClosed.Task, _stderrClosed.Task).WaitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"`{CommandLine}` did not exit within {timeout.TotalSeconds:F0} s.\n{Describe()}");
        }
        return _process.ExitCode;
    }

    /// <summary>SIGTERM, as Kubernetes sends on pod termination.</summary>
    public void Terminate() => Signal("TERM");

    /// <summary>SIGKILL (kill -9): no shutdown code runs, as when a node dies or the OOM killer strikes.</summary>
    public void Kill() => Signal("KILL");

    /// <summary>SIGSTOP: the process holds what it holds (deliveries, connections) and does nothing, as a hung GPU
    /// driver or a node frozen under memory pressure would.</summary>
    public void Freeze() => Signal("STOP");

    /// <summary>SIGCONT after <see cref="Freeze"/>.</summary>
    public void Thaw() => Signal("CONT");

    private void Signal(string name)
    {
        using Process kill = Process.Start("kill", ["-" + name, Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        kill.WaitForExit();
        kill.ExitCode.ShouldBe(0, $"kill -{name} {Id}");
    }

    public string Describe() => $"--- {CommandLine} (pid {Id})\n--- stdout:\n{StandardOutput}\n--- stderr:\n{StandardError}";

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }
        _process.Dispose();
    }

    private void Append(string? line, StringBuilder buffer, TaskCompletionSource closed)
    {
        if (line is null)
        {
            closed.TrySetResult();
            return;
        }
        lock (buffer)
        {
            buffer.AppendLine(line);
        }
        _lines.Enqueue(line);
    }
}
