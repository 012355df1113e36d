using System.Text.Json;
using System.Text.Json.Serialization;

namespace Cluster.GpuWorker.Kernels;

/// <summary>
/// Verdicts on disk, one file per libtorch version and <see cref="CpuIdentity"/>: a worker that starts again on the same
/// kind of machine probes nothing it has probed before. Several workers may share the folder (a node's local disk, or
/// the shared volume): writes merge with what is on disk under a lock file and replace the file atomically, so the
/// worst a race can do is lose a verdict, which only costs a probe.
/// </summary>
public sealed class KernelVerdictStore
{
    private static readonly JsonSerializerOptions s_json = new() { WriteIndented = true, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull };
    private readonly object _gate = new();
    private Dictionary<string, StoredVerdict>? _verdicts;

    public KernelVerdictStore(string directory, string libtorchVersion, CpuIdentity cpu)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        Directory = directory;
        LibtorchVersion = libtorchVersion;
        Cpu = cpu;
        FilePath = System.IO.Path.Combine(directory, $"conv-verdicts-v{KernelProbe.Version}-libtorch-{libtorchVersion}-cpu-{cpu.Fingerprint}.json");
    }

    public string Directory { get; }

    public string LibtorchVersion { get; }

    public CpuIdentity Cpu { get; }

    public string FilePath { get; }

    public static string KeyOf(ConvolutionConfig config, ConvolutionPath path) => $"{config.Key} | {path.ToString().ToLowerInvariant()}";

    public bool TryGet(ConvolutionConfig config, ConvolutionPath path, out ProbeVerdict verdict)
    {
        lock (_gate)
        {
            _verdicts ??= ReadFile();
            if (_verdicts.TryGetValue(KeyOf(config, path), out StoredVerdict? stored))
            {
                verdict = stored.ToVerdict();
                return true;
            }
            verdict = null!;
            return false;
        }
    }

    public void Save(IEnumerable<(ConvolutionConfig Config, ConvolutionPath Path, ProbeVerdict Verdict)> verdicts)
    {
        lock (_gate)
        {
            _verdicts ??= ReadFile();
            var added = verdicts.ToDictionary(v => KeyOf(v.Config, v.Path), v => StoredVerdict.From(v.Verdict));
            foreach ((string key, StoredVerdict verdict) in added)
            {
                _verdicts[key] = verdict;
            }
            try
            {
                System.IO.Directory.CreateDirectory(Directory);
                using FileStream lockFile = AcquireLock();
                Dictionary<string, StoredVerdict> merged = ReadFile();
                foreach ((string key, StoredVerdict verdict) in added)
                {
                    merged[key] = verdict;
                }
                string temporary = $"{FilePath}.{Environment.ProcessId}.tmp";
                var document = new VerdictFile(LibtorchVersion, Cpu.Description, Cpu.Fingerprint, new SortedDictionary<string, StoredVerdict>(merged, StringComparer.Ordinal));
                File.WriteAllText(temporary, JsonSerializer.Serialize(document, s_json));
                File.Move(temporary, FilePath, overwrite: true);
                _verdicts = merged;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // An unwritable cache costs probes on the next start, nothing else: the verdicts stay in memory.
            }
        }
    }

    private FileStream AcquireLock()
    {
        string path = FilePath + ".lock";
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (true)
        {
            try
            {
                return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException) when (DateTime.UtcNow < deadline)
            {
                Thread.Sleep(50);
            }
        }
    }

    private Dictionary<string, StoredVerdict> ReadFile()
    {
        try
        {
            if (!File.Exists(FilePath))
            {
                return new Dictionary<string, StoredVerdict>(StringComparer.Ordinal);
            }
            VerdictFile? file = JsonSerializer.Deserialize<VerdictFile>(File.ReadAllText(FilePath), s_json);
            return file?.Verdicts is null
                ? new Dictionary<string, StoredVerdict>(StringComparer.Ordinal)
                : new Dictionary<string, StoredVerdict>(file.Verdicts, StringComparer.Ordinal);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException)
        {
            // A damaged cache is re-probed, never trusted.
            return new Dictionary<string, StoredVerdict>(StringComparer.Ordinal);
        }
    }

    private sealed record VerdictFile(string Libtorch, string Cpu, string Fingerprint, SortedDictionary<string, StoredVerdict> Verdicts);

    private sealed record StoredVerdict(ProbeOutcome Outcome, double? Error, double Milliseconds, string? Message, DateTime CheckedAt)
    {
        public static StoredVerdict From(ProbeVerdict v) =>
            new(v.Outcome, double.IsFinite(v.Error) ? v.Error : null, Math.Round(v.Milliseconds, 3), v.Message, DateTime.UtcNow);

        public ProbeVerdict ToVerdict() => new(Outcome, Error ?? double.PositiveInfinity, Milliseconds, Message);
    }
}
