using System.Buffers.Binary;
using System.Text;

namespace Cluster.Storage.TensorBoard;

/// <summary>
/// Hand-encoded <c>tensorflow.Event</c> protobufs, just the fields TensorBoard needs for scalars:
/// <c>Event { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }</c>,
/// <c>Summary { repeated Value value = 1; }</c> and <c>Value { string tag = 1; float simple_value = 2; }</c>.
/// A dozen lines of wire format keep Storage free of a protobuf runtime; the tests check the bytes with
/// Google.Protobuf.
/// </summary>
internal static class EventProtobuf
{
    public const string FileVersion = "brain.Event:2";

    private const int Varint = 0;
    private const int Fixed64 = 1;
    private const int LengthDelimited = 2;
    private const int Fixed32 = 5;

    private const int EventWallTime = 1;
    private const int EventStep = 2;
    private const int EventFileVersion = 3;
    private const int EventSummary = 5;
    private const int SummaryValue = 1;
    private const int ValueTag = 1;
    private const int ValueSimpleValue = 2;

    /// <summary>The event every file starts with; TensorBoard reads the version from it.</summary>
    public static byte[] FileVersionEvent(double wallTime)
    {
        var version = Encoding.UTF8.GetBytes(FileVersion);
        var output = new List<byte>(32);
        WriteDouble(output, EventWallTime, wallTime);
        WriteBytes(output, EventFileVersion, version);
        return [.. output];
    }

    public static byte[] ScalarEvent(double wallTime, long step, string tag, float value)
    {
        var valueMessage = new List<byte>(tag.Length + 8);
        WriteBytes(valueMessage, ValueTag, Encoding.UTF8.GetBytes(tag));
        WriteFloat(valueMessage, ValueSimpleValue, value);

        var summary = new List<byte>(valueMessage.Count + 4);
        WriteBytes(summary, SummaryValue, [.. valueMessage]);

        var output = new List<byte>(summary.Count + 24);
        WriteDouble(output, EventWallTime, wallTime);
        WriteTag(output, EventStep, Varint);
        WriteVarint(output, unchecked((ulong)step));
        WriteBytes(output, EventSummary, [.. summary]);
        return [.. output];
    }

    /// <summary>
    /// Adds the scalars of one event to <paramref name="scalars"/>. Fields other than the ones above (graphs,
    /// images, tensor summaries written by tf.summary) are skipped, as is a value without a simple_value.
    /// Throws <see cref="FormatException"/> when the bytes are not a well-formed protobuf.
    /// </summary>
    public static void ReadScalars(ReadOnlySpan<byte> data, List<(string Tag, long Step, double Value)> scalars)
    {
        long step = 0;
        var values = new List<(string Tag, float Value)>();
        var reader = new WireReader(data);
        while (!reader.AtEnd)
        {
            var (field, wireType) = reader.ReadTag();
            if (field == EventStep && wireType == Varint)
            {
                step = unchecked((long)reader.ReadVarint());
            }
            else if (field == EventSummary && wireType == LengthDelimited)
            {
                ReadSummary(reader.ReadLengthDelimited(), values);
            }
            else
            {
                reader.Skip(wireType);
            }
        }

        // The step may follow the summary on the wire; protobuf does not fix the order of fields.
        foreach (var (tag, value) in values)
        {
            scalars.Add((tag, step, value));
        }
    }

    private static void ReadSummary(ReadOnlySpan<byte> data, List<(string Tag, float Value)> values)
    {
        var reader = new WireReader(data);
        while (!reader.AtEnd)
        {
            var (field, wireType) = reader.ReadTag();
            if (field == SummaryValue && wireType == LengthDelimited)
            {
                ReadValue(reader.ReadLengthDelimited(), values);
            }
            else
            {
                reader.Skip(wireType);
            }
        }
    }

    private static void ReadValue(ReadOnlySpan<byte> data, List<(string Tag, float Value)> values)
    {
        var tag = "";
        float? simpleValue = null;
        var reader = new WireReader(data);
        while (!reader.AtEnd)
        {
            var (field, wireType) = reader.ReadTag();
            if (field == ValueTag && wireType == LengthDelimited)
            {
                tag = Encoding.UTF8.GetString(reader.ReadLengthDelimited());
            }
            else if (field == ValueSimpleValue && wireType == Fixed32)
            {
                simpleValue = BinaryPrimitives.ReadSingleLittleEndian(reader.ReadFixed(4));
            }
            else
            {
                reader.Skip(wireType);
            }
        }

        if (simpleValue is { } value)
        {
            values.Add((tag, value));
        }
    }

    private static void WriteTag(List<byte> output, int field, int wireType) =>
        WriteVarint(output, (ulong)((field << 3) | wireType));

    private static void WriteVarint(List<byte> output, ulong value)
    {
        while (value >= 0x80)
        {
            output.Add((byte)(value | 0x80));
            value >>= 7;
        }

        output.Add((byte)value);
    }

    private static void WriteDouble(List<byte> output, int field, double value)
    {
        WriteTag(output, field, Fixed64);
        Span<byte> bytes = stackalloc byte[8];
        BinaryPrimitives.WriteDoubleLittleEndian(bytes, value);
        output.AddRange(bytes);
    }

    private static void WriteFloat(List<byte> output, int field, float value)
    {
        WriteTag(output, field, Fixed32);
        Span<byte> bytes = stackalloc byte[4];
        BinaryPrimitives.WriteSingleLittleEndian(bytes, value);
        output.AddRange(bytes);
    }

    private static void WriteBytes(List<byte> output, int field, byte[] bytes)
    {
        WriteTag(output, field, LengthDelimited);
        WriteVarint(output, (ulong)bytes.Length);
        output.AddRange(bytes);
    }

    private ref struct WireReader(ReadOnlySpan<byte> data)
    {
        private readonly ReadOnlySpan<byte> _data = data;
        private int _position;

        public readonly bool AtEnd => _position == _data.Length;

        public (int Field, int WireType) ReadTag()
        {
            var tag = ReadVarint();
            if (tag >> 3 is 0 or > int.MaxValue)
            {
                throw new FormatException($"field number {tag >> 3} is out of range");
            }

            return ((int)(tag >> 3), (int)(tag & 7));
        }

        public ulong ReadVarint()
        {
            ulong value = 0;
            for (var shift = 0; shift < 64; shift += 7)
            {
                if (_position == _data.Length)
                {
                    throw new FormatException("a varint runs past the end of its message");
                }

                var b = _data[_position++];
                value |= (ulong)(b & 0x7F) << shift;
                if ((b & 0x80) == 0)
                {
                    return value;
                }
            }

            throw new FormatException("a varint is longer than 10 bytes");
        }

        public ReadOnlySpan<byte> ReadFixed(int length)
        {
            if (_data.Length - _position < length)
            {
                throw new FormatException($"a {length}-byte field runs past the end of its message");
            }

            var bytes = _data.Slice(_position, length);
            _position += length;
            return bytes;
        }

        public ReadOnlySpan<byte> ReadLengthDelimited()
        {
            var length = ReadVarint();
            if (length > (ulong)(_data.Length - _position))
            {
                throw new FormatException($"a {length}-byte field runs past the end of its message");
            }

            return ReadFixed((int)length);
        }

        public void Skip(int wireType)
        {
            switch (wireType)
            {
                case Varint:
                    ReadVarint();
                    break;
                case Fixed64:
                    ReadFixed(8);
                    break;
                case LengthDelimited:
                    ReadLengthDelimited();
                    break;
                case Fixed32:
                    ReadFixed(4);
                    break;
                default:
                    // Groups (3, 4) are proto2-only and never appear in Event; anything else is not protobuf.
                    throw new FormatException($"wire type {wireType} is not supported");
            }
        }
    }
}
