using Cluster.Storage.Formats;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Weights;

/// <summary>
/// Moves raw bytes between files and tensor memory in bulk (no per-element work), and maps the file formats'
/// dtypes to libtorch's.
/// </summary>
internal static class TensorBytes
{
    // A span reaches 2 GiB at most; larger tensors go in pieces of this size.
    private const long ChunkBytes = 1L << 30;

    /// <summary>Fills <paramref name="tensor"/> (contiguous, on the CPU) from <paramref name="read"/>(offset, destination).</summary>
    public static void Fill(Tensor tensor, Action<long, Span<byte>> read) =>
        ForEachChunk(tensor, (offset, chunk) => read(offset, chunk.bytes));

    /// <summary>Hands the bytes of <paramref name="tensor"/> (contiguous, on the CPU) to <paramref name="write"/>, in order.</summary>
    public static void Drain(Tensor tensor, Action<ReadOnlySpan<byte>> write) =>
        ForEachChunk(tensor, (_, chunk) => write(chunk.bytes));

    private static void ForEachChunk(Tensor tensor, Action<long, Tensor> action)
    {
        var elements = tensor.numel();
        if (elements == 0)
        {
            return;
        }

        var elementSize = tensor.ElementSize;
        var totalBytes = elements * elementSize;
        if (totalBytes <= ChunkBytes)
        {
            action(0, tensor);
            return;
        }

        using var flat = tensor.view(-1);
        var chunkElements = ChunkBytes / elementSize;
        for (long start = 0; start < elements; start += chunkElements)
        {
            using var chunk = flat.narrow(0, start, Math.Min(chunkElements, elements - start));
            action(start * elementSize, chunk);
        }
    }

    public static ScalarType ToScalarType(SafetensorsDtype dtype) => dtype switch
    {
        SafetensorsDtype.BOOL => ScalarType.Bool,
        SafetensorsDtype.U8 => ScalarType.Byte,
        SafetensorsDtype.I8 => ScalarType.Int8,
        SafetensorsDtype.I16 => ScalarType.Int16,
        SafetensorsDtype.I32 => ScalarType.Int32,
        SafetensorsDtype.I64 => ScalarType.Int64,
        SafetensorsDtype.F16 => ScalarType.Float16,
        SafetensorsDtype.BF16 => ScalarType.BFloat16,
        SafetensorsDtype.F32 => ScalarType.Float32,
        SafetensorsDtype.F64 => ScalarType.Float64,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null),
    };

    public static bool TryToSafetensors(ScalarType dtype, out SafetensorsDtype result)
    {
        SafetensorsDtype? mapped = dtype switch
        {
            ScalarType.Bool => SafetensorsDtype.BOOL,
            ScalarType.Byte => SafetensorsDtype.U8,
            ScalarType.Int8 => SafetensorsDtype.I8,
            ScalarType.Int16 => SafetensorsDtype.I16,
            ScalarType.Int32 => SafetensorsDtype.I32,
            ScalarType.Int64 => SafetensorsDtype.I64,
            ScalarType.Float16 => SafetensorsDtype.F16,
            ScalarType.BFloat16 => SafetensorsDtype.BF16,
            ScalarType.Float32 => SafetensorsDtype.F32,
            ScalarType.Float64 => SafetensorsDtype.F64,
            _ => null,
        };
        result = mapped.GetValueOrDefault();
        return mapped.HasValue;
    }

    /// <summary>PyTorch's name for a dtype ("float32", "int64"), which is what people read in PyTorch code.</summary>
    public static string Name(ScalarType dtype) => dtype switch
    {
        ScalarType.Bool => "bool",
        ScalarType.Byte => "uint8",
        ScalarType.Int8 => "int8",
        ScalarType.Int16 => "int16",
        ScalarType.Int32 => "int32",
        ScalarType.Int64 => "int64",
        ScalarType.Float16 => "float16",
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Float32 => "float32",
        ScalarType.Float64 => "float64",
        _ => dtype.ToString().ToLowerInvariant(),
    };

    public static bool IsFloatingPoint(ScalarType dtype) =>
        dtype is ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float32 or ScalarType.Float64;

    public static int SizeOf(ScalarType dtype) => dtype switch
    {
        ScalarType.Bool or ScalarType.Byte or ScalarType.Int8 => 1,
        ScalarType.Int16 or ScalarType.Float16 or ScalarType.BFloat16 => 2,
        ScalarType.Int32 or ScalarType.Float32 => 4,
        ScalarType.Int64 or ScalarType.Float64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "not a dtype weights files hold"),
    };
}
