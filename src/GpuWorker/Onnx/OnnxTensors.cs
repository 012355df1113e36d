using System.Runtime.InteropServices;
using Onnx;
using TorchSharp;
using static TorchSharp.torch;
using DataType = Onnx.TensorProto.Types.DataType;

namespace Cluster.GpuWorker.Onnx;

/// <summary>ONNX tensors (initializers, Constant attributes) to CPU torch tensors, and ONNX data type codes to torch's.</summary>
internal static class OnnxTensors
{
    /// <summary>The torch element type for an ONNX data type code, or null when this importer does not handle it.</summary>
    public static ScalarType? ToScalarType(int onnxDataType) => (DataType)onnxDataType switch
    {
        DataType.Float => ScalarType.Float32,
        DataType.Double => ScalarType.Float64,
        DataType.Float16 => ScalarType.Float16,
        DataType.Bfloat16 => ScalarType.BFloat16,
        DataType.Uint8 => ScalarType.Byte,
        DataType.Int8 => ScalarType.Int8,
        DataType.Int16 => ScalarType.Int16,
        DataType.Int32 => ScalarType.Int32,
        DataType.Int64 => ScalarType.Int64,
        DataType.Bool => ScalarType.Bool,
        _ => null,
    };

    /// <summary>
    /// Reads <paramref name="proto"/> into a new CPU tensor. Values may sit in raw_data (little-endian), in the typed
    /// repeated fields, or in an external file next to the model; a count that does not match the shape is an error,
    /// because that is what a damaged file usually looks like.
    /// </summary>
    /// <param name="what">How errors name the tensor, e.g. "initializer 'conv1.weight'".</param>
    public static Tensor ToTorch(TensorProto proto, string modelPath, string what)
    {
        string file = Path.GetFileName(modelPath);
        ScalarType type = ToScalarType(proto.DataType)
            ?? throw new OnnxImportException(
                $"{file}: {what} has ONNX data type {(DataType)proto.DataType}, which this importer does not support.");
        long[] shape = [.. proto.Dims];
        if (shape.Any(d => d < 0))
        {
            throw new OnnxImportException($"{file}: {what} has a negative dimension in [{string.Join(",", shape)}].");
        }
        long count = shape.Aggregate(1L, (a, b) => a * b);

        ReadOnlySpan<byte> raw = proto.DataLocation == TensorProto.Types.DataLocation.External
            ? ReadExternal(proto, modelPath, what)
            : proto.RawData.Span;
        bool fromRaw = raw.Length > 0 || (count == 0 && proto.DataLocation == TensorProto.Types.DataLocation.External);

        Tensor flat;
        if (fromRaw)
        {
            int elementSize = ElementSize(type);
            if (raw.Length != count * elementSize)
            {
                throw new OnnxImportException(
                    $"{file}: {what} holds {raw.Length} bytes but its shape [{string.Join(",", shape)}] needs {count * elementSize}; the file looks damaged.");
            }
            flat = FromRaw(raw, type);
        }
        else
        {
            flat = FromTypedFields(proto, type, count, file, what, shape);
        }
        using (flat)
        {
            return flat.reshape(shape);
        }
    }

    private static byte[] ReadExternal(TensorProto proto, string modelPath, string what)
    {
        string file = Path.GetFileName(modelPath);
        string? location = null;
        long offset = 0;
        long length = -1;
        foreach (StringStringEntryProto entry in proto.ExternalData)
        {
            switch (entry.Key)
            {
                case "location":
                    location = entry.Value;
                    break;
                case "offset":
                    offset = long.Parse(entry.Value, System.Globalization.CultureInfo.InvariantCulture);
                    break;
                case "length":
                    length = long.Parse(entry.Value, System.Globalization.CultureInfo.InvariantCulture);
                    break;
            }
        }
        if (location is null)
        {
            throw new OnnxImportException($"{file}: {what} says its data is external but names no location.");
        }
        string directory = Path.GetDirectoryName(Path.GetFullPath(modelPath)) ?? ".";
        string dataPath = Path.GetFullPath(Path.Combine(directory, location));
        // External data must stay beside the model: a crafted file must not read arbitrary files.
        if (!dataPath.StartsWith(directory + Path.DirectorySeparatorChar, StringComparison.Ordinal))
        {
            throw new OnnxImportException($"{file}: {what} points its external data outside the model's folder ('{location}').");
        }
        if (!File.Exists(dataPath))
        {
            throw new OnnxImportException($"{file}: {what} keeps its data in '{location}', which does not exist next to the model.");
        }
        using FileStream stream = File.OpenRead(dataPath);
        if (length < 0)
        {
            length = stream.Length - offset;
        }
        if (offset < 0 || offset + length > stream.Length)
        {
            throw new OnnxImportException(
                $"{file}: {what} wants bytes {offset}..{offset + length} of '{location}', which has only {stream.Length}.");
        }
        var bytes = new byte[length];
        stream.Position = offset;
        stream.ReadExactly(bytes);
        return bytes;
    }

    private static int ElementSize(ScalarType type) => type switch
    {
        ScalarType.Float64 or ScalarType.Int64 => 8,
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Int16 => 2,
        _ => 1,
    };

    private static Tensor FromRaw(ReadOnlySpan<byte> raw, ScalarType type)
    {
        if (!BitConverter.IsLittleEndian)
        {
            throw new PlatformNotSupportedException("ONNX raw tensor data is little-endian; this importer assumes a little-endian host.");
        }
        return type switch
        {
            ScalarType.Float32 => torch.tensor(MemoryMarshal.Cast<byte, float>(raw).ToArray()),
            ScalarType.Float64 => torch.tensor(MemoryMarshal.Cast<byte, double>(raw).ToArray()),
            ScalarType.Int64 => torch.tensor(MemoryMarshal.Cast<byte, long>(raw).ToArray()),
            ScalarType.Int32 => torch.tensor(MemoryMarshal.Cast<byte, int>(raw).ToArray()),
            ScalarType.Int16 => torch.tensor(MemoryMarshal.Cast<byte, short>(raw).ToArray()),
            ScalarType.Byte => torch.tensor(raw.ToArray()),
            ScalarType.Int8 => torch.tensor(MemoryMarshal.Cast<byte, sbyte>(raw).ToArray()),
            ScalarType.Bool => torch.tensor(raw.ToArray().Select(b => b != 0).ToArray()),
            ScalarType.Float16 => HalfBitsToTensor(MemoryMarshal.Cast<byte, ushort>(raw), ScalarType.Float16),
            ScalarType.BFloat16 => HalfBitsToTensor(MemoryMarshal.Cast<byte, ushort>(raw), ScalarType.BFloat16),
            _ => throw new InvalidOperationException($"No raw reader for {type}."),
        };
    }

    private static Tensor FromTypedFields(TensorProto proto, ScalarType type, long count, string file, string what, long[] shape)
    {
        long stored = type switch
        {
            ScalarType.Float32 => proto.FloatData.Count,
            ScalarType.Float64 => proto.DoubleData.Count,
            ScalarType.Int64 => proto.Int64Data.Count,
            _ => proto.Int32Data.Count,
        };
        if (stored != count)
        {
            throw new OnnxImportException(
                $"{file}: {what} holds {stored} values but its shape [{string.Join(",", shape)}] needs {count}; the file looks damaged.");
        }
        return type switch
        {
            ScalarType.Float32 => torch.tensor(proto.FloatData.ToArray()),
            ScalarType.Float64 => torch.tensor(proto.DoubleData.ToArray()),
            ScalarType.Int64 => torch.tensor(proto.Int64Data.ToArray()),
            ScalarType.Int32 => torch.tensor(proto.Int32Data.ToArray()),
            ScalarType.Int16 => torch.tensor(proto.Int32Data.Select(v => (short)v).ToArray()),
            ScalarType.Byte => torch.tensor(proto.Int32Data.Select(v => (byte)v).ToArray()),
            ScalarType.Int8 => torch.tensor(proto.Int32Data.Select(v => (sbyte)v).ToArray()),
            ScalarType.Bool => torch.tensor(proto.Int32Data.Select(v => v != 0).ToArray()),
            // 16-bit floats travel as their bit patterns in int32_data.
            ScalarType.Float16 or ScalarType.BFloat16 => HalfBitsToTensor(proto.Int32Data.Select(v => (ushort)v).ToArray(), type),
            _ => throw new InvalidOperationException($"No typed-field reader for {type}."),
        };
    }

    /// <summary>16-bit float bit patterns to a tensor of that type, through float32 (both conversions are exact).</summary>
    private static Tensor HalfBitsToTensor(ReadOnlySpan<ushort> bits, ScalarType type)
    {
        var values = new float[bits.Length];
        for (int i = 0; i < bits.Length; i++)
        {
            values[i] = type == ScalarType.Float16
                ? (float)BitConverter.UInt16BitsToHalf(bits[i])
                : BitConverter.Int32BitsToSingle(bits[i] << 16);
        }
        using Tensor wide = torch.tensor(values);
        return wide.to(type);
    }
}
