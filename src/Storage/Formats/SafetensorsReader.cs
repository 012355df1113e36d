using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Unicode;

namespace Cluster.Storage.Formats;

/// <summary>
/// Reads a safetensors file in two steps: opening it reads and validates the header only (names, dtypes,
/// shapes, byte ranges), and each tensor's bytes are read later, on request, straight into the caller's
/// buffer. Everything in the header is checked before anything is trusted: the length against the file, the
/// JSON, every dtype, every shape against its byte range, and that the ranges tile the data buffer exactly,
/// with no overlap and no gap. Any problem is a <see cref="SafetensorsFormatException"/> naming the file.
/// </summary>
/// <remarks>
/// <see cref="DataStart"/> and each tensor's <see cref="SafetensorsTensorInfo.Begin"/> give absolute file
/// offsets, so a caller that prefers memory mapping can map the validated ranges itself. Reads are safe from
/// several threads at once.
/// </remarks>
public sealed class SafetensorsReader : IDisposable
{
    private readonly Stream _stream;
    private readonly bool _leaveOpen;
    private readonly Lock _gate = new();
    private readonly Dictionary<string, SafetensorsTensorInfo> _byName;

    /// <summary>
    /// Reads and validates the header of <paramref name="stream"/> (readable and seekable; the header is read
    /// from position 0). <paramref name="fileName"/> is what error messages call it.
    /// </summary>
    public SafetensorsReader(Stream stream, string fileName, bool leaveOpen = false)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentException.ThrowIfNullOrEmpty(fileName);
        if (!stream.CanRead || !stream.CanSeek)
        {
            throw new ArgumentException("A safetensors reader needs a readable, seekable stream.", nameof(stream));
        }

        _stream = stream;
        _leaveOpen = leaveOpen;
        FileName = fileName;

        var (headerLength, tensors, metadata) = ReadHeader();
        HeaderLength = headerLength;
        Tensors = tensors;
        Metadata = metadata;
        _byName = tensors.ToDictionary(tensor => tensor.Name, StringComparer.Ordinal);
    }

    /// <summary>The name error messages use for the file.</summary>
    public string FileName { get; }

    /// <summary>The JSON header's length in bytes, padding included.</summary>
    public long HeaderLength { get; }

    /// <summary>Where the data buffer starts in the file; tensor offsets are relative to it.</summary>
    public long DataStart => 8 + HeaderLength;

    /// <summary>The tensors in the order their bytes appear in the file.</summary>
    public IReadOnlyList<SafetensorsTensorInfo> Tensors { get; }

    /// <summary>The header's "__metadata__" strings (empty when it has none).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Opens the file at <paramref name="path"/> and validates its header.</summary>
    public static SafetensorsReader Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);

        // No FileStream buffer: tensor reads go straight into the caller's memory, and the header is one read.
        var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0, FileOptions.RandomAccess);
        try
        {
            return new SafetensorsReader(stream, path, leaveOpen: false);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>The tensor named <paramref name="name"/>, if the file has one.</summary>
    public bool TryGetTensor(string name, [NotNullWhen(true)] out SafetensorsTensorInfo? tensor) =>
        _byName.TryGetValue(name, out tensor);

    /// <summary>The tensor named <paramref name="name"/>, or a <see cref="KeyNotFoundException"/> naming the file.</summary>
    public SafetensorsTensorInfo GetTensor(string name) =>
        _byName.TryGetValue(name, out var tensor)
            ? tensor
            : throw new KeyNotFoundException($"{FileName}: there is no tensor named '{Printable(name)}' (it has {_byName.Count}).");

    /// <summary>Reads all of <paramref name="tensor"/>'s bytes into <paramref name="destination"/>, which must be exactly that long.</summary>
    public void ReadTensor(SafetensorsTensorInfo tensor, Span<byte> destination)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (destination.Length != tensor.ByteLength)
        {
            throw new ArgumentException(
                $"Tensor '{tensor.Name}' has {tensor.ByteLength} bytes; the destination has {destination.Length}.",
                nameof(destination));
        }
        ReadTensor(tensor, 0, destination);
    }

    /// <summary>
    /// Reads <paramref name="destination"/>.Length bytes of <paramref name="tensor"/>, starting
    /// <paramref name="offsetInTensor"/> bytes into it: for tensors larger than one span, or for reading rows.
    /// </summary>
    public void ReadTensor(SafetensorsTensorInfo tensor, long offsetInTensor, Span<byte> destination)
    {
        ArgumentNullException.ThrowIfNull(tensor);

        // Offsets come from a header this reader validated; an info from elsewhere could point anywhere.
        if (!_byName.TryGetValue(tensor.Name, out var known) || known.Begin != tensor.Begin || known.End != tensor.End)
        {
            throw new ArgumentException($"Tensor '{tensor.Name}' is not one of {FileName}'s tensors.", nameof(tensor));
        }
        if (offsetInTensor < 0 || offsetInTensor > tensor.ByteLength - destination.Length)
        {
            throw new ArgumentOutOfRangeException(
                nameof(offsetInTensor),
                $"Bytes [{offsetInTensor}, {offsetInTensor + destination.Length}) are outside tensor '{tensor.Name}' ({tensor.ByteLength} bytes).");
        }

        ReadAt(DataStart + tensor.Begin + offsetInTensor, destination, $"tensor '{Printable(tensor.Name)}'");
    }

    /// <summary>The bytes of the tensor named <paramref name="name"/>, in a new array.</summary>
    public byte[] ReadTensorBytes(string name)
    {
        var tensor = GetTensor(name);
        if (tensor.ByteLength > Array.MaxLength)
        {
            throw new InvalidOperationException(
                $"{FileName}: tensor '{name}' has {tensor.ByteLength} bytes, more than one array holds; read it in parts.");
        }
        var bytes = new byte[tensor.ByteLength];
        ReadTensor(tensor, bytes);
        return bytes;
    }

    public void Dispose()
    {
        if (!_leaveOpen)
        {
            _stream.Dispose();
        }
    }

    private (long HeaderLength, IReadOnlyList<SafetensorsTensorInfo> Tensors, IReadOnlyDictionary<string, string> Metadata) ReadHeader()
    {
        var fileLength = _stream.Length;
        if (fileLength < 8)
        {
            throw Problem($"the file is {fileLength} bytes long, too short for the 8-byte header length a safetensors file starts with");
        }

        Span<byte> prefix = stackalloc byte[8];
        ReadAt(0, prefix, "the header length");
        var declared = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        if (declared == 0)
        {
            throw Problem("the header length is 0; even an empty file has the header '{}'");
        }

        // Truncation is the likely story when the length runs past the end, so that is what gets said first.
        if (declared > (ulong)(fileLength - 8))
        {
            throw Problem(
                $"the header length {declared} is larger than the rest of the file ({fileLength - 8} bytes): "
                + "the file is truncated or is not safetensors");
        }
        if (declared > Safetensors.MaxHeaderLength)
        {
            throw Problem($"the header length {declared} is over the {Safetensors.MaxHeaderLength}-byte limit for a safetensors header");
        }

        var headerLength = (long)declared;
        var header = new byte[headerLength];
        ReadAt(8, header, "the header");
        var bufferLength = fileLength - 8 - headerLength;

        // The JSON parser checks UTF-8 only where it looks (names are decoded lazily), so check it all first.
        if (!Utf8.IsValid(header))
        {
            throw Problem("the header is not valid UTF-8 text");
        }

        JsonDocument document;
        try
        {
            // A header is two levels deep; a low limit refuses pathological nesting early.
            document = JsonDocument.Parse(header, new JsonDocumentOptions { MaxDepth = 8 });
        }
        catch (JsonException e)
        {
            throw Problem($"the header is not valid JSON ({e.Message})", e);
        }

        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw Problem($"the header is a JSON {Describe(root.ValueKind)}, not an object of tensors");
            }

            var tensors = new List<SafetensorsTensorInfo>();
            IReadOnlyDictionary<string, string> metadata = new Dictionary<string, string>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var property in root.EnumerateObject())
            {
                if (!seen.Add(property.Name))
                {
                    throw Problem($"the header names '{Printable(property.Name)}' twice");
                }
                if (property.Name == Safetensors.MetadataKey)
                {
                    metadata = ParseMetadata(property.Value);
                }
                else
                {
                    tensors.Add(ParseTensor(property.Name, property.Value, bufferLength));
                }
            }

            return (headerLength, CheckTiling(tensors, bufferLength), metadata);
        }
    }

    private Dictionary<string, string> ParseMetadata(JsonElement element)
    {
        if (element.ValueKind != JsonValueKind.Object)
        {
            throw Problem($"{Safetensors.MetadataKey} is a JSON {Describe(element.ValueKind)}, not an object of strings");
        }

        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var entry in element.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.String)
            {
                throw Problem(
                    $"{Safetensors.MetadataKey} entry '{Printable(entry.Name)}' is a JSON {Describe(entry.Value.ValueKind)}, not a string");
            }
            if (!metadata.TryAdd(entry.Name, entry.Value.GetString()!))
            {
                throw Problem($"{Safetensors.MetadataKey} names '{Printable(entry.Name)}' twice");
            }
        }

        return metadata;
    }

    private SafetensorsTensorInfo ParseTensor(string name, JsonElement element, long bufferLength)
    {
        var what = $"tensor '{Printable(name)}'";
        if (element.ValueKind != JsonValueKind.Object)
        {
            throw Problem($"{what} is a JSON {Describe(element.ValueKind)}, not an object with dtype, shape and data_offsets");
        }

        if (!element.TryGetProperty("dtype", out var dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
        {
            throw Problem($"{what} has no dtype string");
        }
        var dtypeName = dtypeElement.GetString()!;
        if (!Safetensors.TryParseDtype(dtypeName, out var dtype))
        {
            throw Problem(
                $"{what} has unknown dtype '{Printable(dtypeName)}' (known: {string.Join(", ", Enum.GetNames<SafetensorsDtype>())})");
        }

        var shape = ReadIntegers(element, "shape", what, count: null);
        var offsets = ReadIntegers(element, "data_offsets", what, count: 2);
        var (begin, end) = (offsets[0], offsets[1]);
        var range = $"data_offsets [{begin}, {end}]";
        if (begin > end)
        {
            throw Problem($"{what} {range} end before they begin");
        }
        if (end > bufferLength)
        {
            throw Problem($"{what} {range} are outside the data buffer ({bufferLength} bytes)");
        }

        long expected;
        try
        {
            expected = Safetensors.ByteLength(dtype, shape);
        }
        catch (OverflowException)
        {
            throw Problem($"{what} shape {Safetensors.FormatShape(shape)} of {dtype} has more bytes than a file can");
        }
        if (end - begin != expected)
        {
            throw Problem($"{what} {range} do not match shape {Safetensors.FormatShape(shape)} of {dtype} ({expected} bytes)");
        }

        return new SafetensorsTensorInfo(name, dtype, Safetensors.Freeze(shape), begin, end);
    }

    private List<long> ReadIntegers(JsonElement tensor, string property, string what, int? count)
    {
        var kind = count is null ? "an array of non-negative integers" : $"an array of {count} non-negative integers";
        if (!tensor.TryGetProperty(property, out var element))
        {
            throw Problem($"{what} has no {property}");
        }
        if (element.ValueKind != JsonValueKind.Array || (count is not null && element.GetArrayLength() != count))
        {
            throw Problem($"{what} {property} is not {kind}: {Truncate(element.GetRawText())}");
        }

        var values = new List<long>(element.GetArrayLength());
        foreach (var item in element.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt64(out var value) || value < 0)
            {
                throw Problem($"{what} {property} is not {kind}: {Truncate(element.GetRawText())}");
            }
            values.Add(value);
        }

        return values;
    }

    // The byte ranges must tile the buffer: sorted by offset, each starts where the last ended, and the last
    // ends at the end of the file. Anything else is corruption or a file built to alias one tensor with another.
    private List<SafetensorsTensorInfo> CheckTiling(List<SafetensorsTensorInfo> tensors, long bufferLength)
    {
        var ordered = tensors
            .OrderBy(tensor => tensor.Begin)
            .ThenBy(tensor => tensor.End)
            .ThenBy(tensor => tensor.Name, StringComparer.Ordinal)
            .ToList();

        long position = 0;
        SafetensorsTensorInfo? previous = null;
        foreach (var tensor in ordered)
        {
            if (tensor.Begin < position)
            {
                throw Problem(
                    $"tensor '{Printable(tensor.Name)}' data_offsets [{tensor.Begin}, {tensor.End}] overlap "
                    + $"tensor '{Printable(previous!.Name)}' data_offsets [{previous.Begin}, {previous.End}]");
            }
            if (tensor.Begin > position)
            {
                throw Problem($"bytes [{position}, {tensor.Begin}) of the data buffer belong to no tensor");
            }
            position = tensor.End;
            previous = tensor;
        }

        if (position != bufferLength)
        {
            throw Problem($"bytes [{position}, {bufferLength}) at the end of the data buffer belong to no tensor");
        }

        return ordered;
    }

    private void ReadAt(long offset, Span<byte> destination, string what)
    {
        lock (_gate)
        {
            try
            {
                _stream.Position = offset;
                _stream.ReadExactly(destination);
            }
            catch (EndOfStreamException e)
            {
                // Only when the file shrank after the header was checked.
                throw Problem($"the file ended while reading {what}: it is truncated", e);
            }
        }
    }

    private SafetensorsFormatException Problem(string problem, Exception? inner = null) => new(FileName, problem, inner);

    private static string Describe(JsonValueKind kind) => kind switch
    {
        JsonValueKind.Array => "array",
        JsonValueKind.String => "string",
        JsonValueKind.Number => "number",
        JsonValueKind.True or JsonValueKind.False => "boolean",
        JsonValueKind.Null => "null",
        _ => kind.ToString().ToLowerInvariant(),
    };

    private static string Truncate(string text) => text.Length <= 60 ? Printable(text) : Printable(text[..60]) + "...";

    // Names come from the file; a newline or NUL in one must not break the one-line message.
    private static string Printable(string text)
    {
        if (!text.Any(char.IsControl))
        {
            return text;
        }

        var builder = new StringBuilder(text.Length + 8);
        foreach (var c in text)
        {
            if (char.IsControl(c))
            {
                builder.Append(CultureInfo.InvariantCulture, $"\\u{(int)c:x4}");
            }
            else
            {
                builder.Append(c);
            }
        }

        return builder.ToString();
    }
}
