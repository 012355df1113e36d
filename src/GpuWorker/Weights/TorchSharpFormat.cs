using System.Text;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Weights;

/// <summary>
/// Reads what TorchSharp's <c>Module.save</c> writes (0.107: Module.save_state_dict and Tensor.Save): a
/// LEB128 entry count, then per entry a .NET BinaryWriter string (7-bit length, UTF-8) for the key, the
/// LEB128 ScalarType code, the LEB128 rank and dimensions, and the raw little-endian bytes. The format has no
/// magic number, so it is recognised by parsing it: every count and length is checked against the bytes left,
/// and the file must end exactly after the last tensor.
/// </summary>
/// <remarks>
/// Reading it into a dictionary (rather than calling Module.load on the target) lets these files go through
/// the same strict matching and report as every other format, and keeps TorchSharp's own loader, which fails
/// with a bare ArgumentException on the first difference, out of the path.
/// </remarks>
internal static class TorchSharpFormat
{
    private const int MaxRank = 32;

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    // TorchSharp's ScalarType codes (libtorch's c10::ScalarType) for the dtypes weights use.
    private static readonly Dictionary<long, ScalarType> Codes = new()
    {
        [0] = ScalarType.Byte,
        [1] = ScalarType.Int8,
        [2] = ScalarType.Int16,
        [3] = ScalarType.Int32,
        [4] = ScalarType.Int64,
        [5] = ScalarType.Float16,
        [6] = ScalarType.Float32,
        [7] = ScalarType.Float64,
        [11] = ScalarType.Bool,
        [15] = ScalarType.BFloat16,
    };

    /// <summary>
    /// Parses the whole stream into new tensors, or throws a <see cref="FormatException"/> saying why the bytes
    /// are not this format (the caller decides how to report it). Tensors already read are disposed on failure.
    /// </summary>
    public static List<KeyValuePair<string, Tensor>> Read(Stream stream)
    {
        var reader = new Reader(stream);
        var tensors = new List<KeyValuePair<string, Tensor>>();
        try
        {
            var count = reader.ReadLeb128("the entry count");

            // Each entry takes at least three bytes (key length, dtype, rank), which bounds a corrupt count.
            if (count > reader.Remaining / 3)
            {
                throw new FormatException($"it declares {count} entries, more than the {reader.Remaining} bytes left can hold: the file is truncated or is not in this format");
            }

            var keys = new HashSet<string>(StringComparer.Ordinal);
            for (long i = 0; i < count; i++)
            {
                // This format has no magic number: until the whole file parses, its bytes may be anything (a text file, a
                // key file), so an error names an entry by its position, never by the key it read.
                var entry = $"entry {i + 1}";
                var key = reader.ReadString();
                if (!keys.Add(key))
                {
                    throw new FormatException($"{entry} repeats the key of an earlier entry");
                }

                var code = reader.ReadLeb128($"the dtype of {entry}");
                if (!Codes.TryGetValue(code, out var dtype))
                {
                    throw new FormatException($"{entry} has dtype code {code}, which is not a dtype weights use");
                }

                var rank = reader.ReadLeb128($"the rank of {entry}");
                if (rank > MaxRank)
                {
                    throw new FormatException($"{entry} has {rank} dimensions");
                }
                var shape = new long[rank];
                for (var d = 0; d < rank; d++)
                {
                    shape[d] = reader.ReadLeb128($"a dimension of {entry}");
                }

                long bytes;
                try
                {
                    bytes = shape.Aggregate((long)TensorBytes.SizeOf(dtype), (total, dimension) => checked(total * dimension));
                }
                catch (OverflowException)
                {
                    bytes = long.MaxValue;
                }
                if (bytes > reader.Remaining)
                {
                    throw new FormatException(
                        $"{entry}, of shape [{string.Join(", ", shape)}], needs more than the {reader.Remaining} bytes left: the file is truncated");
                }

                var tensor = empty(shape, dtype);
                tensors.Add(new(key, tensor));
                TensorBytes.Fill(tensor, (_, destination) => reader.ReadExactly(destination));
            }

            if (reader.Remaining != 0)
            {
                throw new FormatException($"{reader.Remaining} bytes follow the last tensor");
            }
            return tensors;
        }
        catch
        {
            foreach (var (_, tensor) in tensors)
            {
                tensor.Dispose();
            }
            throw;
        }
    }

    private sealed class Reader(Stream stream)
    {
        private readonly Stream _stream = stream;

        public long Remaining => _stream.Length - _stream.Position;

        public long ReadLeb128(string what)
        {
            long result = 0;
            for (var shift = 0; shift < 63; shift += 7)
            {
                var b = ReadByte(what);
                result |= (long)(b & 0x7f) << shift;
                if ((b & 0x80) == 0)
                {
                    return result < 0 ? throw new FormatException($"{what} is negative") : result;
                }
            }
            throw new FormatException($"{what} is not a valid LEB128 number");
        }

        public string ReadString()
        {
            // BinaryWriter.Write(string): a 7-bit encoded length (at most five bytes) and UTF-8.
            var length = 0;
            for (var shift = 0; ; shift += 7)
            {
                if (shift > 28)
                {
                    throw new FormatException("a key length is not a valid 7-bit encoded number");
                }
                var b = ReadByte("a key length");
                length |= (b & 0x7f) << shift;
                if ((b & 0x80) == 0)
                {
                    break;
                }
            }
            if (length < 0 || length > Remaining)
            {
                throw new FormatException($"a key of {length} bytes does not fit in the {Remaining} bytes left");
            }

            var bytes = new byte[length];
            ReadExactly(bytes);
            try
            {
                return StrictUtf8.GetString(bytes);
            }
            catch (DecoderFallbackException)
            {
                throw new FormatException("a key is not valid UTF-8");
            }
        }

        public void ReadExactly(Span<byte> destination)
        {
            try
            {
                _stream.ReadExactly(destination);
            }
            catch (EndOfStreamException e)
            {
                throw new FormatException("the file ends in the middle of a tensor: it is truncated", e);
            }
        }

        private byte ReadByte(string what)
        {
            var b = _stream.ReadByte();
            return b < 0 ? throw new FormatException($"the file ends before {what}: it is truncated") : (byte)b;
        }
    }
}
