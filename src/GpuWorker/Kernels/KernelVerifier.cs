using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;

namespace Cluster.GpuWorker.Kernels;

/// <summary>Settings of the kernel check (`Worker:KernelCache`, ...).</summary>
public sealed record KernelVerifierOptions
{
    /// <summary>Where verdicts are kept between runs (<see cref="KernelVerdictStore"/>).</summary>
    public string CacheDirectory { get; init; } = DefaultCacheDirectory;

    /// <summary>A probe that reports nothing for this long is taken for a hung kernel: its process is killed.</summary>
    public TimeSpan ProbeTimeout { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>Deliberately broken kernels, for tests of the check itself.</summary>
    public IReadOnlyList<InjectedFault> Faults { get; init; } = [];

    /// <summary>$XDG_CACHE_HOME/transfer-cluster/kernels, else ~/.cache/transfer-cluster/kernels, else under the temp folder.</summary>
    public static string DefaultCacheDirectory
    {
        get
        {
            string? root = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            if (string.IsNullOrEmpty(root))
            {
                string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
                root = string.IsNullOrEmpty(home) ? Path.GetTempPath() : Path.Combine(home, ".cache");
            }
            return Path.Combine(root, "transfer-cluster", "kernels");
        }
    }
}

/// <summary>What the check decided for one configuration the native kernel got wrong.</summary>
public sealed record KernelReroute(string Config, ProbeOutcome Native, double NativeError, ConvolutionPath Path, double PathMilliseconds);

/// <summary>The verdicts of this process so far, as heartbeats, `selftest` and `models bench` show them.</summary>
public sealed record KernelCheckReport(string Cpu, string Libtorch, int Checked, IReadOnlyList<KernelReroute> Rerouted)
{
    public string Summary
    {
        get
        {
            string text = string.Create(CultureInfo.InvariantCulture,
                $"{Checked} convolution configuration(s) checked on {Cpu}, libtorch {Libtorch}: ");
            if (Rerouted.Count == 0)
            {
                return text + "all native kernels right";
            }
            int crashed = Rerouted.Count(r => r.Native == ProbeOutcome.Crashed);
            var paths = Rerouted.GroupBy(r => r.Path).Select(g => $"{g.Count()} to {g.Key.ToString().ToLowerInvariant()}");
            return text + string.Create(CultureInfo.InvariantCulture,
                $"{Rerouted.Count} rerouted ({Rerouted.Count - crashed} wrong, {crashed} crashed; {string.Join(", ", paths)})");
        }
    }
}

/// <summary>Raised when no path computes a convolution correctly on this machine, or the check itself cannot run.</summary>
public sealed class KernelCheckException(string message) : Exception(message);

/// <summary>
/// Decides how every convolution configuration a model will run is computed on this machine, without trusting any
/// kernel it has not checked: libtorch's own kernel if it agrees with a float64 reference (<see cref="KernelProbe"/>),
/// else the fastest fallback that does (<see cref="ConvolutionKernels.FallbacksFor"/>). Probes run in a child process
/// (`gpu-worker probe-kernels`), so a kernel that dies (oneDNN's SIGFPE on Zen 5) kills the child, is recorded as
/// crashed, and the check goes on in a new child. Verdicts are kept per libtorch version and CPU
/// (<see cref="KernelVerdictStore"/>), so probing costs nothing after the first start on a kind of machine.
/// Thread-safe; one check runs at a time.
/// </summary>
public sealed class KernelVerifier
{
    private readonly KernelVerifierOptions _options;
    private readonly ILogger _logger;
    private readonly KernelVerdictStore _store;
    private readonly object _gate = new();
    private readonly ConcurrentDictionary<ConvolutionConfig, (ConvolutionPath Path, KernelReroute? Reroute)> _decided = new();
    private int _probeProcesses;

    public KernelVerifier(KernelVerifierOptions? options = null, ILogger<KernelVerifier>? logger = null)
    {
        _options = options ?? new KernelVerifierOptions();
        _logger = logger ?? (ILogger)NullLogger.Instance;
        Cpu = CpuIdentity.Current;
        LibtorchVersion = torch.__version__;
        _store = new KernelVerdictStore(_options.Faults.Count == 0 ? _options.CacheDirectory : Path.Combine(_options.CacheDirectory, "injected"),
            LibtorchVersion, Cpu);
    }

    public CpuIdentity Cpu { get; }

    public string LibtorchVersion { get; }

    /// <summary>Child processes started so far (a second check of known configurations starts none).</summary>
    public int ProbeProcessesStarted => Volatile.Read(ref _probeProcesses);

    public string CacheFile => _store.FilePath;

    public KernelCheckReport Report
    {
        get
        {
            var reroutes = _decided.Values.Select(d => d.Reroute).OfType<KernelReroute>().OrderBy(r => r.Config, StringComparer.Ordinal).ToList();
            return new KernelCheckReport(Cpu.Description, LibtorchVersion, _decided.Count, reroutes);
        }
    }

    /// <summary>Routes for a model whose configurations are <paramref name="configs"/>: checked now; any other met later is checked when first run.</summary>
    public ConvolutionRoutes RoutesFor(IEnumerable<ConvolutionConfig> configs)
    {
        var routes = new ConvolutionRoutes(config => Resolve([config])[config]);
        routes.Add(Resolve(configs.ToList()));
        return routes;
    }

    /// <summary>The verified path of each configuration (probing those no verdict is known for).</summary>
    public IReadOnlyDictionary<ConvolutionConfig, ConvolutionPath> Resolve(IReadOnlyCollection<ConvolutionConfig> configs)
    {
        ArgumentNullException.ThrowIfNull(configs);
        lock (_gate)
        {
            var result = new Dictionary<ConvolutionConfig, ConvolutionPath>();
            List<ConvolutionConfig> pending = configs.Distinct().Where(c =>
            {
                if (_decided.TryGetValue(c, out var known))
                {
                    result[c] = known.Path;
                    return false;
                }
                return true;
            }).ToList();
            if (pending.Count == 0)
            {
                return result;
            }
            var clock = Stopwatch.StartNew();
            var probedNow = new HashSet<(ConvolutionConfig, ConvolutionPath)>();
            // Native kernels first; fallbacks only where those fail: the cheap ones (pointwise, NCHW) together, unfold
            // (im2col, memory-hungry) only where both fail.
            Dictionary<(ConvolutionConfig, ConvolutionPath), ProbeVerdict> verdicts = Verdicts(pending.Select(c => (c, ConvolutionPath.Native)), probedNow);
            HashSet<ConvolutionConfig> newlyProbed = [.. pending.Where(c => probedNow.Contains((c, ConvolutionPath.Native)))];
            List<ConvolutionConfig> failing = pending.Where(c => !verdicts[(c, ConvolutionPath.Native)].Passed).ToList();
            foreach ((var key, ProbeVerdict v) in Verdicts(failing.SelectMany(c => ConvolutionKernels.FallbacksFor(c)
                .Where(p => p != ConvolutionPath.Unfold).Select(p => (c, p))), probedNow))
            {
                verdicts[key] = v;
            }
            List<ConvolutionConfig> unfold = failing.Where(c => !ConvolutionKernels.FallbacksFor(c)
                .Any(p => p != ConvolutionPath.Unfold && verdicts[(c, p)].Passed)).ToList();
            foreach ((var key, ProbeVerdict v) in Verdicts(unfold.Select(c => (c, ConvolutionPath.Unfold)), probedNow))
            {
                verdicts[key] = v;
            }

            foreach (ConvolutionConfig config in pending)
            {
                ProbeVerdict native = verdicts[(config, ConvolutionPath.Native)];
                if (native.Passed)
                {
                    _decided[config] = (ConvolutionPath.Native, null);
                    result[config] = ConvolutionPath.Native;
                    continue;
                }
                (ConvolutionPath Path, ProbeVerdict Verdict)? best = ConvolutionKernels.FallbacksFor(config)
                    .Where(p => verdicts.ContainsKey((config, p)) && verdicts[(config, p)].Passed)
                    .Select(p => ((ConvolutionPath, ProbeVerdict)?)(p, verdicts[(config, p)]))
                    .OrderBy(p => p!.Value.Item2.Milliseconds)
                    .FirstOrDefault();
                if (best is not (ConvolutionPath path, ProbeVerdict chosen))
                {
                    string tried = string.Join("; ", ConvolutionKernels.FallbacksFor(config).Prepend(ConvolutionPath.Native)
                        .Where(p => verdicts.ContainsKey((config, p)))
                        .Select(p => $"{p.ToString().ToLowerInvariant()} {Describe(verdicts[(config, p)])}"));
                    throw new KernelCheckException($"no way to compute convolution [{config.Key}] correctly on this machine ({Cpu.Description}): {tried}");
                }
                var reroute = new KernelReroute(config.Key, native.Outcome, native.Error, path, chosen.Milliseconds);
                _decided[config] = (path, reroute);
                result[config] = path;
                // Once per process: a warning when this check found it, information when an earlier one did.
                _logger.Log(newlyProbed.Contains(config) ? LogLevel.Warning : LogLevel.Information,
                    "Convolution [{Config}]: libtorch's kernel on this CPU is {Verdict}; computing it as {Path} instead ({Milliseconds:F1} ms, relative error {Error:G2})",
                    config.Key, Describe(native), path.ToString().ToLowerInvariant(), chosen.Milliseconds, chosen.Error);
            }
            if (probedNow.Count > 0)
            {
                _logger.LogInformation("Kernel check: {Probed} probe(s) of {Configs} new convolution configuration(s) in {Seconds:F1} s; {Summary}",
                    probedNow.Count, pending.Count, clock.Elapsed.TotalSeconds, Report.Summary);
            }
            return result;
        }
    }

    private static string Describe(ProbeVerdict v) => v.Outcome switch
    {
        ProbeOutcome.Wrong => string.Create(CultureInfo.InvariantCulture, $"wrong, relative error {v.Error:G2}"),
        ProbeOutcome.Passed => string.Create(CultureInfo.InvariantCulture, $"right, relative error {v.Error:G2}"),
        _ => $"{v.Outcome.ToString().ToLowerInvariant()}: {v.Message}",
    };

    /// <summary>Known verdicts from the store; the rest probed (in child processes) and stored.</summary>
    private Dictionary<(ConvolutionConfig, ConvolutionPath), ProbeVerdict> Verdicts(
        IEnumerable<(ConvolutionConfig Config, ConvolutionPath Path)> wanted, HashSet<(ConvolutionConfig, ConvolutionPath)> probed)
    {
        var verdicts = new Dictionary<(ConvolutionConfig, ConvolutionPath), ProbeVerdict>();
        var unknown = new List<(ConvolutionConfig Config, ConvolutionPath Path)>();
        foreach ((ConvolutionConfig config, ConvolutionPath path) in wanted.Distinct())
        {
            if (_store.TryGet(config, path, out ProbeVerdict known))
            {
                verdicts[(config, path)] = known;
            }
            else
            {
                unknown.Add((config, path));
            }
        }
        // One child per thread count: a process sets its libtorch threads once.
        foreach (var group in unknown.GroupBy(u => u.Config.Threads))
        {
            var tasks = group.Select((u, i) => new ProbeTask(i, u.Config, u.Path)).ToList();
            IReadOnlyDictionary<int, ProbeVerdict> results = RunProbes(group.Key, tasks);
            var fresh = tasks.Select(t => (t.Config, t.Path, results[t.Index])).ToList();
            _store.Save(fresh);
            foreach ((ConvolutionConfig config, ConvolutionPath path, ProbeVerdict verdict) in fresh)
            {
                verdicts[(config, path)] = verdict;
                probed.Add((config, path));
            }
        }
        return verdicts;
    }

    /// <summary>
    /// Runs <paramref name="tasks"/> in child processes: a task during which the child dies is recorded as crashed,
    /// and a new child takes the tasks that had not started.
    /// </summary>
    private Dictionary<int, ProbeVerdict> RunProbes(int threads, List<ProbeTask> tasks)
    {
        var results = new Dictionary<int, ProbeVerdict>();
        List<ProbeTask> remaining = tasks;
        while (remaining.Count > 0)
        {
            (Dictionary<int, ProbeVerdict> done, int? crashedIndex, string death) = RunChild(threads, remaining);
            foreach ((int index, ProbeVerdict verdict) in done)
            {
                results[index] = verdict;
            }
            if (crashedIndex is int crashed)
            {
                results[crashed] = new ProbeVerdict(ProbeOutcome.Crashed, double.PositiveInfinity, 0, death);
                _logger.LogWarning("Kernel probe of [{Config}] ({Path}) killed its process: {Death}",
                    remaining.First(t => t.Index == crashed).Config.Key, remaining.First(t => t.Index == crashed).Path, death);
            }
            else if (done.Count == 0)
            {
                throw new KernelCheckException($"the kernel check's probe process did not run ({death})");
            }
            remaining = remaining.Where(t => !results.ContainsKey(t.Index)).ToList();
        }
        return results;
    }

    private (Dictionary<int, ProbeVerdict> Done, int? Crashed, string Death) RunChild(int threads, List<ProbeTask> tasks)
    {
        string requestFile = Path.Combine(Path.GetTempPath(), $"kernel-probe-{Environment.ProcessId}-{Guid.NewGuid():N}.json");
        File.WriteAllText(requestFile, JsonSerializer.Serialize(new ProbeRequest(threads, tasks, _options.Faults), KernelProbeProgram.Json));
        var done = new Dictionary<int, ProbeVerdict>();
        int? started = null;
        var stderr = new StringBuilder();
        var lines = new BlockingCollection<string>();
        try
        {
            using var process = new Process { StartInfo = ProbeStartInfo(requestFile) };
            process.OutputDataReceived += (_, e) =>
            {
                if (e.Data is null)
                {
                    lines.CompleteAdding();
                }
                else if (e.Data.StartsWith(KernelProbeProgram.LinePrefix, StringComparison.Ordinal))
                {
                    lines.Add(e.Data[KernelProbeProgram.LinePrefix.Length..]);
                }
            };
            process.ErrorDataReceived += (_, e) =>
            {
                if (e.Data is not null)
                {
                    lock (stderr)
                    {
                        stderr.AppendLine(e.Data);
                    }
                }
            };
            Interlocked.Increment(ref _probeProcesses);
            try
            {
                process.Start();
            }
            catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException)
            {
                throw new KernelCheckException($"cannot start the kernel check's probe process ({process.StartInfo.FileName}): {e.Message}");
            }
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            bool hung = false;
            while (!lines.IsCompleted)
            {
                if (!lines.TryTake(out string? line, _options.ProbeTimeout))
                {
                    if (lines.IsCompleted)
                    {
                        break;
                    }
                    hung = true;
                    process.Kill(entireProcessTree: true);
                    break;
                }
                ProbeLine? report = JsonSerializer.Deserialize<ProbeLine>(line, KernelProbeProgram.Json);
                if (report is null)
                {
                    continue;
                }
                if (report.Error is not null)
                {
                    ProbeTask failed = tasks.First(t => t.Index == report.Index);
                    throw new KernelCheckException($"the kernel probe of [{failed.Config.Key}] ({failed.Path}) failed: {report.Error}");
                }
                if (report.Started)
                {
                    started = report.Index;
                }
                else if (report.Verdict is not null)
                {
                    done[report.Index] = report.Verdict;
                    started = null;
                }
            }
            process.WaitForExit();
            string tail;
            lock (stderr)
            {
                tail = string.Join(" | ", stderr.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).TakeLast(3));
            }
            string death = hung
                ? $"no answer for {_options.ProbeTimeout.TotalSeconds:F0} s: killed"
                : ExitDescription(process.ExitCode) + (tail.Length > 0 ? $"; stderr: {tail}" : "");
            if (process.ExitCode == 0 && !hung && done.Count < tasks.Count)
            {
                throw new KernelCheckException($"the kernel check's probe process ended after {done.Count} of {tasks.Count} probes without a reason");
            }
            return (done, started, death);
        }
        finally
        {
            lines.Dispose();
            File.Delete(requestFile);
        }
    }

    private static string ExitDescription(int code) => code switch
    {
        0 => "exited normally",
        > 128 and < 160 => string.Create(CultureInfo.InvariantCulture, $"killed by signal {code - 128}{SignalName(code - 128)} (exit code {code})"),
        _ => string.Create(CultureInfo.InvariantCulture, $"exit code {code}"),
    };

    private static string SignalName(int signal) => signal switch
    {
        4 => " SIGILL",
        6 => " SIGABRT",
        7 => " SIGBUS",
        8 => " SIGFPE",
        9 => " SIGKILL",
        11 => " SIGSEGV",
        _ => "",
    };

    /// <summary>
    /// This worker's own program (gpu-worker.dll, which is this assembly, and sits beside every program that hosts
    /// workers), run by the same dotnet host: `dotnet exec gpu-worker.dll probe-kernels REQUEST`.
    /// </summary>
    private static ProcessStartInfo ProbeStartInfo(string requestFile)
    {
        string assembly = typeof(KernelVerifier).Assembly.Location;
        ProcessStartInfo start;
        string muxer = Path.GetFullPath(Path.Combine(RuntimeEnvironment.GetRuntimeDirectory(), "..", "..", "..", OperatingSystem.IsWindows() ? "dotnet.exe" : "dotnet"));
        if (assembly.Length > 0 && File.Exists(muxer))
        {
            start = new ProcessStartInfo(muxer);
            start.ArgumentList.Add("exec");
            start.ArgumentList.Add(assembly);
        }
        else
        {
            // Self-contained or single-file: this process is gpu-worker itself.
            start = new ProcessStartInfo(Environment.ProcessPath ?? throw new KernelCheckException("cannot find the worker program to run kernel probes"));
        }
        start.ArgumentList.Add(KernelProbeProgram.Command);
        start.ArgumentList.Add(requestFile);
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        start.RedirectStandardInput = false;
        start.UseShellExecute = false;
        return start;
    }
}
