using System.Buffers;
using System.Buffers.Binary;
using System.Text.Json;

namespace Cluster.Storage.Formats;

/// <summary>
/// Streams a safetensors file into any writable stream, forward only, so it can go through a hashing stream
/// or an atomic temporary file. <see cref="Begin"/> takes every tensor's name, dtype and shape and writes the
/// header at once; the data then follows tensor by tensor, in <see cref="Layout"/> order (sorted by name, so
/// the same tensors always give the same bytes), each in as many pieces as the caller likes.
/// </summary>
public sealed class SafetensorsWriter
{
    private readonly Stream _destination;
    private int _current;
    private long _writtenOfCurrent;

    private SafetensorsWriter(Stream destination, IReadOnlyList<SafetensorsTensorInfo> layout)
    {
        _destination = destination;
        Layout = layout;
    }

    /// <summary>The tensors in the order their data must be written (and appears in the file).</summary>
    public IReadOnlyList<SafetensorsTensorInfo> Layout { get; }

    /// <summary>
    /// Writes the header for <paramref name="tensors"/> (and <paramref name="metadata"/>, if any) and returns
    /// the writer that takes their data. Names must be unique and not "__metadata__".
    /// </summary>
    public static SafetensorsWriter Begin(
        Stream destination,
        IEnumerable<SafetensorsEntry> tensors,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(destination);
        ArgumentNullException.ThrowIfNull(tensors);
        if (!destination.CanWrite)
        {
            throw new ArgumentException("The destination stream is not writable.", nameof(destination));
        }

        var layout = PlanLayout(tensors);
        var header = EncodeHeader(layout, metadata);

        Span<byte> length = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
        destination.Write(length);
        destination.Write(header);
        return new SafetensorsWriter(destination, layout);
    }

    /// <summary>
    /// Appends <paramref name="data"/> (little-endian, row-major) to the tensor named <paramref name="name"/>.
    /// That tensor must be the next one in <see cref="Layout"/> not yet complete; a tensor may be written in
    /// several calls. Empty tensors need no call (an empty write is accepted at any time).
    /// </summary>
    public void Write(string name, ReadOnlySpan<byte> data)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (data.IsEmpty && Layout.Any(tensor => string.Equals(tensor.Name, name, StringComparison.Ordinal)))
        {
            // Nothing to write, and an empty tensor may already count as complete: callers need not special-case it.
            return;
        }

        SkipCompleteTensors();
        if (_current == Layout.Count)
        {
            throw new InvalidOperationException($"Every tensor is already written; there is nothing left for '{name}'.");
        }

        var tensor = Layout[_current];
        if (!string.Equals(tensor.Name, name, StringComparison.Ordinal))
        {
            throw new InvalidOperationException(
                $"Tensors are written in name order: '{tensor.Name}' is next (written {_writtenOfCurrent} of {tensor.ByteLength} bytes), not '{name}'.");
        }
        if (data.Length > tensor.ByteLength - _writtenOfCurrent)
        {
            throw new ArgumentException(
                $"Tensor '{name}' has {tensor.ByteLength} bytes and {_writtenOfCurrent} are written; {data.Length} more do not fit.",
                nameof(data));
        }

        _destination.Write(data);
        _writtenOfCurrent += data.Length;
    }

    /// <summary>Checks that every tensor's data was written in full, and flushes the stream.</summary>
    public void Complete()
    {
        SkipCompleteTensors();
        if (_current < Layout.Count)
        {
            var tensor = Layout[_current];
            throw new InvalidOperationException(
                $"Tensor '{tensor.Name}' has {_writtenOfCurrent} of its {tensor.ByteLength} bytes written"
                + (_current + 1 < Layout.Count ? $", and {Layout.Count - _current - 1} more tensors follow it." : "."));
        }
        _destination.Flush();
    }

    private void SkipCompleteTensors()
    {
        while (_current < Layout.Count && _writtenOfCurrent == Layout[_current].ByteLength)
        {
            _current++;
            _writtenOfCurrent = 0;
        }
    }

    private static List<SafetensorsTensorInfo> PlanLayout(IEnumerable<SafetensorsEntry> tensors)
    {
        var layout = new List<SafetensorsTensorInfo>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        long offset = 0;
        foreach (var tensor in tensors.OrderBy(tensor => tensor.Name, StringComparer.Ordinal))
        {
            ArgumentNullException.ThrowIfNull(tensor);
            ArgumentNullException.ThrowIfNull(tensor.Name);
            if (tensor.Name == Safetensors.MetadataKey)
            {
                throw new ArgumentException($"'{Safetensors.MetadataKey}' is reserved for metadata; it cannot name a tensor.", nameof(tensors));
            }
            if (!names.Add(tensor.Name))
            {
                throw new ArgumentException($"Two tensors are named '{tensor.Name}'.", nameof(tensors));
            }

            long length;
            try
            {
                length = tensor.ByteLength;
            }
            catch (Exception e) when (e is OverflowException or ArgumentOutOfRangeException)
            {
                throw new ArgumentException(
                    $"Tensor '{tensor.Name}' has an invalid shape {Safetensors.FormatShape(tensor.Shape)}: {e.Message}", nameof(tensors), e);
            }

            var end = checked(offset + length);
            layout.Add(new SafetensorsTensorInfo(tensor.Name, tensor.Dtype, Safetensors.Freeze(tensor.Shape), offset, end));
            offset = end;
        }

        return layout;
    }

    private static byte[] EncodeHeader(IReadOnlyList<SafetensorsTensorInfo> layout, IReadOnlyDictionary<string, string>? metadata)
    {
        var buffer = new ArrayBufferWriter<byte>(256 + 96 * layout.Count);
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject(Safetensors.MetadataKey);
                foreach (var (key, value) in metadata.OrderBy(entry => entry.Key, StringComparer.Ordinal))
                {
                    json.WriteString(key, value);
                }
                json.WriteEndObject();
            }

            foreach (var tensor in layout)
            {
                json.WriteStartObject(tensor.Name);
                json.WriteString("dtype", tensor.Dtype.ToString());
                json.WriteStartArray("shape");
                foreach (var dimension in tensor.Shape)
                {
                    json.WriteNumberValue(dimension);
                }
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(tensor.Begin);
                json.WriteNumberValue(tensor.End);
                json.WriteEndArray();
                json.WriteEndObject();
            }
            json.WriteEndObject();
        }

        // Spaces up to a multiple of 8, so the data buffer starts 8-byte aligned and a mapped file can be
        // viewed as float64/int64 arrays in place (the reference implementation pads the same way).
        var padded = (buffer.WrittenCount + 7) / 8 * 8;
        var header = new byte[padded];
        buffer.WrittenSpan.CopyTo(header);
        header.AsSpan(buffer.WrittenCount).Fill((byte)' ');
        return header;
    }
}
