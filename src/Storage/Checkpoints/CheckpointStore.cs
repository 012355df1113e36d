using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Cluster.Storage.Files;
using Cluster.Storage.Formats;

namespace Cluster.Storage.Checkpoints;

/// <summary>
/// Trial checkpoints on shared storage, as DESIGN.md lays them out:
/// <c>checkpoints/&lt;sweepId&gt;/&lt;trialId&gt;/segment-NNNN.safetensors</c> plus <c>segment-NNNN.json</c>.
/// <para>
/// Writing is two atomic steps (each a temporary file, flushed, renamed): the tensors, hashed while streamed; then the
/// JSON naming that hash. A process killed between or during them leaves at worst a tensors file without its JSON, or
/// an old JSON: neither is ever taken for a good checkpoint, because <see cref="FindLatestGoodAsync"/> accepts a segment
/// only when its JSON parses, belongs to this trial and segment, and the tensors' bytes hash to what the JSON says.
/// The newest segment that passes is the one to resume from; the ones that fail are reported with their reason.
/// </para>
/// </summary>
public sealed partial class CheckpointStore(FileStore files)
{
    private static readonly JsonSerializerOptions s_json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.CamelCase };

    /// <summary>The trial's folder, relative to the storage root.</summary>
    public static string TrialDirectory(string sweepId, string trialId) =>
        $"checkpoints/{CheckName(sweepId, "sweep id")}/{CheckName(trialId, "trial id")}";

    public static string TensorsPath(string sweepId, string trialId, int segment) =>
        $"{TrialDirectory(sweepId, trialId)}/segment-{segment:D4}.safetensors";

    public static string InfoPath(string sweepId, string trialId, int segment) =>
        $"{TrialDirectory(sweepId, trialId)}/segment-{segment:D4}.json";

    /// <summary>
    /// Writes segment <see cref="CheckpointInfo.Segment"/>'s checkpoint (replacing one of the same segment: a redelivered
    /// segment writes the same checkpoint again) and returns its info with path, hash and size filled in.
    /// </summary>
    public async Task<CheckpointInfo> WriteAsync(CheckpointInfo info, IReadOnlyList<CheckpointTensor> tensors, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(info);
        ArgumentNullException.ThrowIfNull(tensors);
        if (info.Segment < 0)
        {
            throw new ArgumentException($"segment {info.Segment} is negative");
        }
        foreach (CheckpointTensor tensor in tensors)
        {
            long expected = Safetensors.ByteLength(tensor.Dtype, tensor.Shape);
            if (tensor.Data.Length != expected)
            {
                throw new ArgumentException($"tensor '{tensor.Name}' has {tensor.Data.Length} bytes; its dtype and shape need {expected}");
            }
        }
        string tensorsPath = TensorsPath(info.SweepId, info.TrialId, info.Segment);
        var metadata = new Dictionary<string, string>
        {
            ["sweep"] = info.SweepId,
            ["trial"] = info.TrialId,
            ["segment"] = info.Segment.ToString(CultureInfo.InvariantCulture),
            ["epoch"] = info.Epoch.ToString(CultureInfo.InvariantCulture),
        };
        string sha256 = await files.WriteWithSha256Async(tensorsPath, (stream, token) =>
        {
            SafetensorsWriter writer = SafetensorsWriter.Begin(stream, tensors.Select(t => new SafetensorsEntry(t.Name, t.Dtype, t.Shape)), metadata);
            var byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
            foreach (SafetensorsTensorInfo layout in writer.Layout)
            {
                token.ThrowIfCancellationRequested();
                writer.Write(layout.Name, byName[layout.Name].Data.Span);
            }
            writer.Complete();
            return Task.CompletedTask;
        }, ct);
        CheckpointInfo written = info with
        {
            TensorsPath = tensorsPath,
            Sha256 = sha256,
            Bytes = new FileInfo(files.Resolve(tensorsPath)).Length,
            WrittenAt = info.WrittenAt == default ? DateTime.UtcNow : info.WrittenAt,
        };
        await files.WriteAllBytesAsync(InfoPath(info.SweepId, info.TrialId, info.Segment), JsonSerializer.SerializeToUtf8Bytes(written, s_json), ct);
        return written;
    }

    /// <summary>The segments that have a JSON or a tensors file, newest first (whether good or not).</summary>
    public IReadOnlyList<int> Segments(string sweepId, string trialId) =>
        [.. files.List(TrialDirectory(sweepId, trialId))
            .Select(p => SegmentFile().Match(Path.GetFileName(p)))
            .Where(m => m.Success)
            .Select(m => int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture))
            .Distinct()
            .OrderDescending()];

    /// <summary>
    /// The newest checkpoint of the trial that verifies, and every newer one that did not with its reason; null (with the
    /// rejections) when none verifies, so the trial starts over. <paramref name="before"/> limits the search to segments
    /// before that one (a redelivered segment resumes from its predecessors' checkpoints, never from its own).
    /// </summary>
    public async Task<(LoadedCheckpoint? Checkpoint, IReadOnlyList<RejectedCheckpoint> Rejected)> FindLatestGoodAsync(
        string sweepId, string trialId, CancellationToken ct, int? before = null)
    {
        var rejected = new List<RejectedCheckpoint>();
        foreach (int segment in Segments(sweepId, trialId).Where(s => before is null || s < before))
        {
            (LoadedCheckpoint? checkpoint, string? reason) = await TryLoadAsync(sweepId, trialId, segment, ct);
            if (checkpoint is not null)
            {
                return (checkpoint, rejected);
            }
            rejected.Add(new RejectedCheckpoint(segment, reason!));
        }
        return (null, rejected);
    }

    /// <summary>Loads and verifies one segment's checkpoint; the reason says what is wrong when it cannot be used.</summary>
    public async Task<(LoadedCheckpoint? Checkpoint, string? Reason)> TryLoadAsync(string sweepId, string trialId, int segment, CancellationToken ct)
    {
        string infoPath = InfoPath(sweepId, trialId, segment);
        string tensorsPath = TensorsPath(sweepId, trialId, segment);
        if (!files.Exists(infoPath))
        {
            return (null, $"{infoPath} is missing (the write did not finish)");
        }
        CheckpointInfo? info;
        try
        {
            await using Stream stream = files.OpenRead(infoPath);
            info = await JsonSerializer.DeserializeAsync<CheckpointInfo>(stream, s_json, ct);
        }
        catch (JsonException e)
        {
            return (null, $"{infoPath} is not readable JSON ({e.Message.Split('\n')[0]})");
        }
        if (info is null || info.SweepId != sweepId || info.TrialId != trialId || info.Segment != segment || info.TensorsPath != tensorsPath)
        {
            return (null, $"{infoPath} describes another checkpoint");
        }
        if (info.Format > 1)
        {
            return (null, $"{infoPath} has format {info.Format}; this build reads format 1");
        }
        if (!files.Exists(tensorsPath))
        {
            return (null, $"{tensorsPath} is missing");
        }
        string actual = await files.Sha256Async(tensorsPath, ct);
        if (actual != info.Sha256)
        {
            return (null, $"{tensorsPath} has SHA-256 {actual[..12]}..., its JSON says {info.Sha256[..Math.Min(12, info.Sha256.Length)]}... (torn or corrupt)");
        }
        try
        {
            using SafetensorsReader reader = SafetensorsReader.Open(files.Resolve(tensorsPath));
            CheckpointTensor[] tensors = [.. reader.Tensors.Select(t => new CheckpointTensor(t.Name, t.Dtype, t.Shape, reader.ReadTensorBytes(t.Name)))];
            return (new LoadedCheckpoint(info, tensors), null);
        }
        catch (SafetensorsFormatException e)
        {
            return (null, e.Message);
        }
    }

    /// <summary>
    /// Deletes every segment of the trial except <paramref name="keep"/> (retention: best and latest while a trial runs,
    /// only the best once it has finished). Returns the bytes freed.
    /// </summary>
    public long Retain(string sweepId, string trialId, IReadOnlySet<int> keep)
    {
        ArgumentNullException.ThrowIfNull(keep);
        return Delete(sweepId, trialId, Segments(sweepId, trialId).Where(s => !keep.Contains(s)));
    }

    /// <summary>Deletes the given segments' files (those that exist). Returns the bytes freed.</summary>
    public long Delete(string sweepId, string trialId, IEnumerable<int> segments)
    {
        ArgumentNullException.ThrowIfNull(segments);
        long freed = 0;
        foreach (int segment in segments)
        {
            foreach (string path in new[] { TensorsPath(sweepId, trialId, segment), InfoPath(sweepId, trialId, segment) })
            {
                if (files.Exists(path))
                {
                    freed += new FileInfo(files.Resolve(path)).Length;
                    files.Delete(path);
                }
            }
        }
        return freed;
    }

    private static string CheckName(string value, string what)
    {
        if (string.IsNullOrEmpty(value) || !SafeName().IsMatch(value))
        {
            throw new ArgumentException($"{what} '{value}' must be letters, digits, '-', '_' or '.' (and not start with '.')");
        }
        return value;
    }

    [GeneratedRegex("^segment-([0-9]{4,})\\.(safetensors|json)$")]
    private static partial Regex SegmentFile();

    [GeneratedRegex("^[A-Za-z0-9_-][A-Za-z0-9._-]*$")]
    private static partial Regex SafeName();
}
