using System.Buffers;
using System.Security.Cryptography;
using Cluster.Storage.Files;

namespace Cluster.Storage.TensorBoard;

/// <summary>
/// Writes a trial's learning curves as a TensorBoard event file, so <c>tensorboard --logdir &lt;root&gt;/tensorboard</c>
/// shows them. Each writer creates its own new file, <c>events.out.tfevents.&lt;unix seconds&gt;.&lt;host&gt;.&lt;pid&gt;.&lt;random&gt;</c>,
/// in its folder on the first <see cref="Flush"/> that has something to write, and only ever appends to it:
/// a trial resumed by another process gets a second file beside the first, and TensorBoard merges all files of
/// a folder into one run. Existing files are never rewritten.
/// </summary>
/// <remarks>
/// <see cref="Scalar"/> only buffers; <see cref="Flush"/> (call it after each batch of scalars, e.g. an epoch's)
/// appends the batch in one write and syncs it to disk, so a killed process or machine loses at most the batch
/// it had not flushed, and a write cut short leaves at most one torn record at the end of the file, which
/// <see cref="ReadScalars(string)"/> skips. If a write fails, the file is abandoned and the next Flush writes the
/// batch again into a new file (records the failed write did complete then appear twice). Values are stored as
/// float32, as TensorBoard's simple_value is. Not thread-safe: one trial, one writer, one thread.
/// </remarks>
public sealed class TensorBoardWriter : IDisposable
{
    /// <summary>What every event file's name starts with; TensorBoard looks for "tfevents" in file names.</summary>
    public const string FileNamePrefix = "events.out.tfevents.";

    private readonly TimeProvider _time;
    private readonly ArrayBufferWriter<byte> _pending = new();
    private FileStream? _file;
    private bool _disposed;

    /// <param name="folder">The folder the file goes in, e.g. <c>&lt;root&gt;/tensorboard/&lt;sweep&gt;/&lt;trial&gt;</c>; created when needed.</param>
    /// <param name="time">The clock for the file name and for scalars without a wall time; the system clock by default.</param>
    public TensorBoardWriter(string folder, TimeProvider? time = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(folder);
        Folder = Path.GetFullPath(folder);
        _time = time ?? TimeProvider.System;
    }

    /// <summary>A writer for the folder at <paramref name="relativeFolder"/> in <paramref name="files"/>, e.g. "tensorboard/sweep-1/trial-7".</summary>
    public TensorBoardWriter(FileStore files, string relativeFolder, TimeProvider? time = null)
        : this(ResolveFolder(files, relativeFolder), time)
    {
    }

    /// <summary>The full path of the folder the file goes in.</summary>
    public string Folder { get; }

    /// <summary>The full path of the file this writer appends to; null until its first write.</summary>
    public string? FilePath { get; private set; }

    /// <summary>
    /// Buffers one point of the curve <paramref name="tag"/> (e.g. "loss/train") until the next <see cref="Flush"/>.
    /// <paramref name="wallTime"/> defaults to now; one of kind Unspecified is taken as UTC (as databases return them).
    /// </summary>
    public void Scalar(string tag, long step, double value, DateTime? wallTime = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentException.ThrowIfNullOrEmpty(tag);
        var seconds = wallTime is { } time ? UnixSeconds(time) : UnixSeconds(_time.GetUtcNow());
        TfRecord.Append(_pending, EventProtobuf.ScalarEvent(seconds, step, tag, (float)value));
    }

    /// <summary>
    /// Appends the buffered scalars to the file (creating it, with its file_version record, the first time) and
    /// syncs it to disk. Does nothing when nothing is buffered.
    /// </summary>
    public void Flush()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_pending.WrittenCount == 0)
        {
            return;
        }

        var file = _file ?? CreateFile();
        try
        {
            file.Write(_pending.WrittenSpan);
            file.Flush(flushToDisk: true);
        }
        catch
        {
            // Whatever part of the batch reached the file is now its tail; appending after it would bury a torn
            // record in the middle of the file, which readers rightly treat as corruption.
            _file = null;
            file.Dispose();
            throw;
        }

        _pending.Clear();
    }

    /// <summary>Flushes what is buffered and closes the file.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        try
        {
            Flush();
        }
        finally
        {
            _disposed = true;
            _file?.Dispose();
            _file = null;
        }
    }

    /// <summary>
    /// The scalars of every event file in <paramref name="folder"/> (an empty list when it does not exist), file
    /// by file in name order (the creation second leads the name) and in the order they were written within a
    /// file. Both CRCs of every record are checked: a record the file ends inside of, which a crashed writer or
    /// one still writing leaves at the end, is skipped; a complete record that fails a CRC or is not a
    /// well-formed Event throws <see cref="TensorBoardFormatException"/> naming the file and offset. Events
    /// without scalars (the file_version record, graphs, tensor summaries) contribute nothing.
    /// </summary>
    public static IReadOnlyList<(string Tag, long Step, double Value)> ReadScalars(string folder)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(folder);
        if (!Directory.Exists(folder))
        {
            return [];
        }

        var scalars = new List<(string Tag, long Step, double Value)>();
        foreach (var path in Directory.EnumerateFiles(folder, FileNamePrefix + "*").Order(StringComparer.Ordinal))
        {
            ReadFile(path, scalars);
        }

        return scalars;
    }

    /// <summary>Like <see cref="ReadScalars(string)"/> for the folder at <paramref name="relativeFolder"/> in <paramref name="files"/>.</summary>
    public static IReadOnlyList<(string Tag, long Step, double Value)> ReadScalars(FileStore files, string relativeFolder) =>
        ReadScalars(ResolveFolder(files, relativeFolder));

    private static string ResolveFolder(FileStore files, string relativeFolder)
    {
        ArgumentNullException.ThrowIfNull(files);
        return files.Resolve(relativeFolder);
    }

    private static void ReadFile(string path, List<(string Tag, long Step, double Value)> scalars)
    {
        byte[] bytes;

        // ReadWrite sharing: a trial may be appending to the file while the CLI reads it.
        using (var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete))
        {
            bytes = new byte[stream.Length];
            stream.ReadExactly(bytes);
        }

        var name = Path.GetFileName(path);
        foreach (var (offset, data) in TfRecord.Read(bytes, name))
        {
            try
            {
                EventProtobuf.ReadScalars(data.Span, scalars);
            }
            catch (FormatException e)
            {
                throw new TensorBoardFormatException(name, offset, $"the data is not a valid Event protobuf: {e.Message}", e);
            }
        }
    }

    private static double UnixSeconds(DateTime time)
    {
        var utc = time.Kind switch
        {
            DateTimeKind.Unspecified => DateTime.SpecifyKind(time, DateTimeKind.Utc),
            _ => time.ToUniversalTime(),
        };
        return (utc - DateTime.UnixEpoch).TotalSeconds;
    }

    private static double UnixSeconds(DateTimeOffset time) => (time.UtcDateTime - DateTime.UnixEpoch).TotalSeconds;

    // Host names may hold characters a file name should not; TensorBoard only needs "tfevents" in the name.
    private static string FileNameSafe(string host) =>
        string.Concat(host.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '-'));

    private FileStream CreateFile()
    {
        Directory.CreateDirectory(Folder);
        var now = _time.GetUtcNow();

        // The pid and random part make the name unique per writer even for two processes of one host starting in
        // the same second; CreateNew makes sure an existing file is never written into.
        var name = $"{FileNamePrefix}{now.ToUnixTimeSeconds()}.{FileNameSafe(Environment.MachineName)}" +
                   $".{Environment.ProcessId}.{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(4))}";
        var path = Path.Join(Folder, name);
        var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.Read, bufferSize: 0);
        try
        {
            var header = new ArrayBufferWriter<byte>();
            TfRecord.Append(header, EventProtobuf.FileVersionEvent(UnixSeconds(now)));
            file.Write(header.WrittenSpan);
        }
        catch
        {
            file.Dispose();
            throw;
        }

        _file = file;
        FilePath = path;
        return file;
    }
}
