using System.Collections.ObjectModel;

namespace Cluster.Storage.Formats;

/// <summary>The element types a safetensors file can hold here (the names are the format's own).</summary>
public enum SafetensorsDtype
{
    BOOL,
    U8,
    I8,
    I16,
    I32,
    I64,
    F16,
    BF16,
    F32,
    F64,
}

/// <summary>
/// The safetensors format: an 8-byte little-endian header length N, N bytes of UTF-8 JSON that name each
/// tensor's dtype, shape and byte range, then the data buffer those ranges point into. It holds no code, so
/// loading one cannot run anything, and a reader can map the buffer instead of copying it. Used for weights,
/// checkpoints and feature shards. <see cref="SafetensorsReader"/> and <see cref="SafetensorsWriter"/> do the work.
/// </summary>
public static class Safetensors
{
    /// <summary>The key in the header that holds free-form string metadata rather than a tensor.</summary>
    public const string MetadataKey = "__metadata__";

    /// <summary>
    /// The largest header accepted (the reference implementation's limit too): a header is a few bytes per
    /// tensor, so anything bigger is corruption, and refusing it keeps a hostile file from making us allocate.
    /// </summary>
    public const long MaxHeaderLength = 100_000_000;

    /// <summary>The number of bytes one element of <paramref name="dtype"/> takes.</summary>
    public static int SizeOf(SafetensorsDtype dtype) => dtype switch
    {
        SafetensorsDtype.BOOL or SafetensorsDtype.U8 or SafetensorsDtype.I8 => 1,
        SafetensorsDtype.I16 or SafetensorsDtype.F16 or SafetensorsDtype.BF16 => 2,
        SafetensorsDtype.I32 or SafetensorsDtype.F32 => 4,
        SafetensorsDtype.I64 or SafetensorsDtype.F64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a safetensors dtype"),
    };

    /// <summary>The dtype named <paramref name="name"/> in a header ("F32", "BF16", ...); case-sensitive, as the format is.</summary>
    public static bool TryParseDtype(string name, out SafetensorsDtype dtype)
    {
        // Enum.TryParse would also accept numbers and other casings, which the format does not allow.
        foreach (var candidate in Enum.GetValues<SafetensorsDtype>())
        {
            if (string.Equals(candidate.ToString(), name, StringComparison.Ordinal))
            {
                dtype = candidate;
                return true;
            }
        }

        dtype = default;
        return false;
    }

    /// <summary>
    /// The number of bytes a tensor of <paramref name="dtype"/> and <paramref name="shape"/> takes, or an
    /// <see cref="OverflowException"/> when it does not fit in a long (only a hostile header gets there).
    /// </summary>
    public static long ByteLength(SafetensorsDtype dtype, IReadOnlyList<long> shape)
    {
        ArgumentNullException.ThrowIfNull(shape);
        long bytes = SizeOf(dtype);
        foreach (var dimension in shape)
        {
            if (dimension < 0)
            {
                throw new ArgumentOutOfRangeException(nameof(shape), dimension, "a dimension is negative");
            }
            bytes = checked(bytes * dimension);
        }

        return bytes;
    }

    /// <summary>Formats a shape the way PyTorch users read it: [64, 3, 7, 7]; [] for a scalar.</summary>
    public static string FormatShape(IReadOnlyList<long> shape) => "[" + string.Join(", ", shape) + "]";

    /// <summary>
    /// Writes <paramref name="tensors"/> to <paramref name="destination"/> as one safetensors file (in name
    /// order, whatever order they come in). For data that is produced piece by piece, use
    /// <see cref="SafetensorsWriter"/> directly.
    /// </summary>
    public static void Write(
        Stream destination,
        IEnumerable<SafetensorsTensor> tensors,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        var list = tensors.ToList();
        var writer = SafetensorsWriter.Begin(
            destination,
            list.Select(tensor => new SafetensorsEntry(tensor.Name, tensor.Dtype, tensor.Shape)),
            metadata);
        foreach (var tensor in list.OrderBy(tensor => tensor.Name, StringComparer.Ordinal))
        {
            writer.Write(tensor.Name, tensor.Data.Span);
        }
        writer.Complete();
    }

    internal static IReadOnlyList<long> Freeze(IReadOnlyList<long> shape) =>
        new ReadOnlyCollection<long>(shape.ToArray());
}

/// <summary>A tensor to be written: its name, dtype and shape (the bytes come separately).</summary>
public sealed record SafetensorsEntry(string Name, SafetensorsDtype Dtype, IReadOnlyList<long> Shape)
{
    /// <summary>The bytes the tensor's data takes: product(shape) times the dtype's size.</summary>
    public long ByteLength => Safetensors.ByteLength(Dtype, Shape);
}

/// <summary>A tensor with its little-endian, row-major bytes, for <see cref="Safetensors.Write"/>.</summary>
public sealed record SafetensorsTensor(string Name, SafetensorsDtype Dtype, IReadOnlyList<long> Shape, ReadOnlyMemory<byte> Data);

/// <summary>
/// One tensor as a file's header describes it. <see cref="Begin"/> and <see cref="End"/> are relative to
/// the data buffer, which starts at <see cref="SafetensorsReader.DataStart"/> in the file.
/// </summary>
public sealed record SafetensorsTensorInfo(string Name, SafetensorsDtype Dtype, IReadOnlyList<long> Shape, long Begin, long End)
{
    /// <summary>The bytes the tensor's data takes.</summary>
    public long ByteLength => End - Begin;

    /// <summary>The number of elements (1 for a scalar, 0 when a dimension is 0).</summary>
    public long ElementCount => ByteLength / Safetensors.SizeOf(Dtype);
}
