using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Cluster.Storage.Files;

namespace Cluster.Storage.Datasets;

/// <summary>One image of a dataset: where it is (relative to the dataset root, '/' separators), its class, size and hash.</summary>
public sealed record DatasetEntry(string Path, string Label, long Bytes, string Sha256);

/// <summary>A class of a dataset: its name, its index (the label models train on) and how many images it has.</summary>
public sealed record DatasetClass(string Name, int Index, int Images);

/// <summary>
/// The images of a dataset, in a fixed order, and what was left out. Stored under the storage root as
/// <c>datasets/&lt;id&gt;/manifest.tsv</c> (a header line, then one line per image: path, label, bytes, sha256),
/// <c>skipped.tsv</c> (path, reason code, message) and <c>dataset.json</c> (where the images live, counts).
/// </summary>
/// <remarks>
/// The id is derived from manifest.tsv's bytes, so the same files with the same labels give the same id wherever
/// they live and whenever they are scanned, and any change to an image gives a new one: it is the dataset
/// version that feature-set keys include. A row id is an entry's index in <see cref="Entries"/>.
/// </remarks>
public sealed class DatasetManifest
{
    public const string ManifestFileName = "manifest.tsv";
    public const string SkippedFileName = "skipped.tsv";
    public const string InfoFileName = "dataset.json";
    public const string Header = "path\tlabel\tbytes\tsha256";
    public const string SkippedHeader = "path\treason\tmessage";

    // 64 bits of SHA-256: short enough for a folder name and a CLI argument, far from colliding for any number
    // of datasets one installation will ever see. The full hash is kept beside it.
    private const int IdHexLength = 16;

    private static readonly JsonSerializerOptions s_json = new(JsonSerializerDefaults.Web) { WriteIndented = true };

    /// <summary>
    /// A manifest of <paramref name="entries"/>, sorted by label, then path (ordinal), so the order, and with it
    /// the id and every row id, does not depend on the order files were found in.
    /// </summary>
    /// <param name="root">The folder the entries' paths are relative to, as an absolute path; not part of the id.</param>
    public DatasetManifest(IEnumerable<DatasetEntry> entries, IEnumerable<SkippedImage> skipped, string root)
    {
        ArgumentNullException.ThrowIfNull(entries);
        ArgumentNullException.ThrowIfNull(skipped);
        ArgumentException.ThrowIfNullOrWhiteSpace(root);
        var sorted = entries.ToList();
        sorted.Sort(static (a, b) =>
        {
            var byLabel = string.CompareOrdinal(a.Label, b.Label);
            return byLabel != 0 ? byLabel : string.CompareOrdinal(a.Path, b.Path);
        });
        foreach (var entry in sorted)
        {
            Validate(entry);
        }

        Entries = sorted;
        Skipped = skipped.OrderBy(s => s.Path, StringComparer.Ordinal).ToList();
        Root = root;
        Classes = sorted
            .GroupBy(e => e.Label, StringComparer.Ordinal)
            .Select((group, index) => new DatasetClass(group.Key, index, group.Count()))
            .ToList();

        using var hash = new HashingStream();
        WriteManifest(hash);
        ContentSha256 = hash.HexDigest();
        Id = ContentSha256[..IdHexLength];
    }

    /// <summary>The dataset id: the first 16 hex digits of <see cref="ContentSha256"/>.</summary>
    public string Id { get; }

    /// <summary>SHA-256 (lowercase hex) of manifest.tsv.</summary>
    public string ContentSha256 { get; }

    /// <summary>The folder the images are in (their paths are relative to it).</summary>
    public string Root { get; }

    /// <summary>The images in row order.</summary>
    public IReadOnlyList<DatasetEntry> Entries { get; }

    /// <summary>Classes in ordinal order of their names; a class's index is its position here.</summary>
    public IReadOnlyList<DatasetClass> Classes { get; }

    /// <summary>What the scan left out, by path.</summary>
    public IReadOnlyList<SkippedImage> Skipped { get; }

    /// <summary>The dataset's folder under the storage root.</summary>
    public string Directory => DirectoryOf(Id);

    public static string DirectoryOf(string id) => $"datasets/{id}";

    /// <summary>Writes manifest.tsv, skipped.tsv and dataset.json under <see cref="Directory"/>, each atomically.</summary>
    /// <remarks>manifest.tsv goes last: a folder whose manifest exists is complete.</remarks>
    public async Task SaveAsync(FileStore store, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(store);
        await store.WriteAsync($"{Directory}/{SkippedFileName}", (stream, _) => WriteSkippedAsync(stream), ct);
        var info = new DatasetInfo(
            Id,
            ContentSha256,
            Root,
            Entries.Count,
            Classes.Select(c => new DatasetInfoClass(c.Name, c.Images)).ToList(),
            Skipped.Count);
        await store.WriteAsync(
            $"{Directory}/{InfoFileName}",
            (stream, token) => JsonSerializer.SerializeAsync(stream, info, s_json, token),
            ct);
        var written = await store.WriteWithSha256Async(
            $"{Directory}/{ManifestFileName}",
            (stream, _) =>
            {
                WriteManifest(stream);
                return Task.CompletedTask;
            },
            ct);
        if (written != ContentSha256)
        {
            throw new InvalidOperationException($"Manifest of dataset {Id} hashed to {written} when written, {ContentSha256} when built.");
        }
    }

    /// <summary>
    /// Reads the dataset <paramref name="id"/> back from the store, checking that manifest.tsv still hashes to its
    /// id; a <see cref="DatasetInputException"/> names the file and line of anything malformed.
    /// </summary>
    public static async Task<DatasetManifest> LoadAsync(FileStore store, string id, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentException.ThrowIfNullOrWhiteSpace(id);
        var directory = DirectoryOf(id);
        if (!store.Exists($"{directory}/{ManifestFileName}"))
        {
            throw new DatasetInputException($"Dataset '{id}' is not in the storage root '{store.Root}' (no {directory}/{ManifestFileName}).");
        }

        DatasetInfo? info;
        await using (var stream = store.OpenRead($"{directory}/{InfoFileName}"))
        {
            info = await JsonSerializer.DeserializeAsync<DatasetInfo>(stream, s_json, ct);
        }

        if (info is null || string.IsNullOrWhiteSpace(info.Root))
        {
            throw new DatasetInputException($"{directory}/{InfoFileName} does not name the dataset's root folder.");
        }

        var entries = await ReadTableAsync(store, $"{directory}/{ManifestFileName}", Header, 4, ParseEntry, ct);
        var skipped = store.Exists($"{directory}/{SkippedFileName}")
            ? await ReadTableAsync(store, $"{directory}/{SkippedFileName}", SkippedHeader, 3, ParseSkipped, ct)
            : [];
        var manifest = new DatasetManifest(entries, skipped, info.Root);
        if (manifest.Id != id)
        {
            throw new DatasetInputException(
                $"{directory}/{ManifestFileName} hashes to dataset id {manifest.Id}, not {id}: it was changed after it was written.");
        }

        return manifest;
    }

    /// <summary>Writes manifest.tsv's content: UTF-8 without a BOM, '\n' line ends, integers in invariant form.</summary>
    public void WriteManifest(Stream stream)
    {
        using var writer = new StreamWriter(stream, new UTF8Encoding(false), bufferSize: 1 << 16, leaveOpen: true) { NewLine = "\n" };
        writer.WriteLine(Header);
        foreach (var entry in Entries)
        {
            writer.Write(entry.Path);
            writer.Write('\t');
            writer.Write(entry.Label);
            writer.Write('\t');
            writer.Write(entry.Bytes.ToString(CultureInfo.InvariantCulture));
            writer.Write('\t');
            writer.WriteLine(entry.Sha256);
        }
    }

    private async Task WriteSkippedAsync(Stream stream)
    {
        await using var writer = new StreamWriter(stream, new UTF8Encoding(false), bufferSize: 1 << 16, leaveOpen: true) { NewLine = "\n" };
        await writer.WriteLineAsync(SkippedHeader);
        foreach (var skipped in Skipped)
        {
            // Skipped paths are often skipped *because* of a tab or newline in them; escaped, each stays one line.
            await writer.WriteLineAsync($"{PrintableText.Escape(skipped.Path)}\t{skipped.Reason.Code()}\t{PrintableText.Escape(skipped.Message)}");
        }
    }

    private static void Validate(DatasetEntry entry)
    {
        if (entry.Path.Length == 0 || entry.Path.Any(char.IsControl) || entry.Label.Length == 0 || entry.Label.Any(char.IsControl))
        {
            throw new ArgumentException($"Entry '{PrintableText.Escape(entry.Path)}' has an empty path or label, or a control character in one.", nameof(entry));
        }

        if (entry.Sha256.Length != 64 || !entry.Sha256.All(char.IsAsciiHexDigitLower))
        {
            throw new ArgumentException($"Entry '{entry.Path}' has '{entry.Sha256}' as SHA-256; expected 64 lowercase hex digits.", nameof(entry));
        }
    }

    private static async Task<List<T>> ReadTableAsync<T>(
        FileStore store,
        string relativePath,
        string header,
        int columns,
        Func<string[], T> parse,
        CancellationToken ct)
    {
        var rows = new List<T>();
        await using var stream = store.OpenRead(relativePath);
        using var reader = new StreamReader(stream, new UTF8Encoding(false, throwOnInvalidBytes: true));
        var first = await reader.ReadLineAsync(ct);
        if (first != header)
        {
            throw new DatasetInputException($"{relativePath}:1: expected the header '{PrintableText.Escape(header)}', found '{PrintableText.Escape(first ?? "")}'.");
        }

        var lineNumber = 1;
        while (await reader.ReadLineAsync(ct) is { } line)
        {
            lineNumber++;
            var fields = line.Split('\t');
            if (fields.Length != columns)
            {
                throw new DatasetInputException($"{relativePath}:{lineNumber}: expected {columns} tab-separated fields, found {fields.Length}.");
            }

            try
            {
                rows.Add(parse(fields));
            }
            catch (Exception e) when (e is FormatException or ArgumentException)
            {
                throw new DatasetInputException($"{relativePath}:{lineNumber}: {e.Message}", e);
            }
        }

        return rows;
    }

    private static DatasetEntry ParseEntry(string[] fields)
    {
        if (!long.TryParse(fields[2], NumberStyles.None, CultureInfo.InvariantCulture, out var bytes))
        {
            throw new FormatException($"'{fields[2]}' is not a byte count.");
        }

        var entry = new DatasetEntry(fields[0], fields[1], bytes, fields[3]);
        Validate(entry);
        return entry;
    }

    private static SkippedImage ParseSkipped(string[] fields) =>
        ImageSkipReasons.TryParse(fields[1], out var reason)
            ? new SkippedImage(fields[0], reason, fields[2])
            : throw new FormatException($"'{fields[1]}' is not a skip reason.");

    private sealed record DatasetInfo(string Id, string Sha256, string Root, int Images, List<DatasetInfoClass> Classes, int Skipped);

    private sealed record DatasetInfoClass(string Name, int Images);

    /// <summary>A write-only stream that hashes what is written to it, so the id needs no copy of the manifest.</summary>
    private sealed class HashingStream : Stream
    {
        private readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);

        public override bool CanRead => false;

        public override bool CanSeek => false;

        public override bool CanWrite => true;

        public override long Length => throw new NotSupportedException();

        public override long Position
        {
            get => throw new NotSupportedException();
            set => throw new NotSupportedException();
        }

        public string HexDigest() => Convert.ToHexStringLower(_hash.GetHashAndReset());

        public override void Write(byte[] buffer, int offset, int count) => _hash.AppendData(buffer, offset, count);

        public override void Write(ReadOnlySpan<byte> buffer) => _hash.AppendData(buffer);

        public override void Flush()
        {
        }

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                _hash.Dispose();
            }

            base.Dispose(disposing);
        }
    }
}
