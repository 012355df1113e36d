using System.Buffers.Binary;
using Cluster.Storage.Formats;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Extraction;

/// <summary>
/// How a feature set's activations are stored on disk and held in memory for training: float32, or bfloat16 /
/// float16 at half the bytes. Features are always computed (and pooled) in float32 or the compute precision, then
/// rounded once, to nearest even, when a shard is written. One type with one parser, so the CLI's "bf16", the
/// database's "bfloat16" and the file's "BF16" cannot drift apart.
/// </summary>
public sealed class FeatureStorageDtype
{
    public static readonly FeatureStorageDtype Fp32 = new("fp32", "float32", SafetensorsDtype.F32, ScalarType.Float32, 4);

    /// <summary>float32's exponent range with 8 bits of mantissa: activations never overflow it.</summary>
    public static readonly FeatureStorageDtype Bf16 = new("bf16", "bfloat16", SafetensorsDtype.BF16, ScalarType.BFloat16, 2);

    /// <summary>11 bits of mantissa but a largest value of 65504: values beyond it become infinity.</summary>
    public static readonly FeatureStorageDtype Fp16 = new("fp16", "float16", SafetensorsDtype.F16, ScalarType.Float16, 2);

    private FeatureStorageDtype(string name, string recordName, SafetensorsDtype safetensors, ScalarType scalarType, int bytesPerValue)
    {
        Name = name;
        RecordName = recordName;
        Safetensors = safetensors;
        ScalarType = scalarType;
        BytesPerValue = bytesPerValue;
    }

    public static IReadOnlyList<FeatureStorageDtype> All { get; } = [Fp32, Bf16, Fp16];

    /// <summary>What users write and messages carry: fp32, bf16, fp16.</summary>
    public string Name { get; }

    /// <summary>What <c>feature_sets.dtype</c> and manifest.json hold: float32, bfloat16, float16 (torch's names).</summary>
    public string RecordName { get; }

    public SafetensorsDtype Safetensors { get; }

    public ScalarType ScalarType { get; }

    public int BytesPerValue { get; }

    /// <summary>The dtype called <paramref name="name"/> (fp32, bf16, fp16), or an <see cref="ArgumentException"/> listing them.</summary>
    public static FeatureStorageDtype Parse(string name) =>
        TryParse(name, out FeatureStorageDtype? dtype)
            ? dtype
            : throw new ArgumentException($"storage dtype '{name}' is not one of: {string.Join(", ", All.Select(d => d.Name))}", nameof(name));

    public static bool TryParse(string? name, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out FeatureStorageDtype? dtype)
    {
        dtype = All.FirstOrDefault(d => d.Name == name);
        return dtype is not null;
    }

    /// <summary>The dtype of a shard file's "features" tensor, or a <see cref="FormatException"/> for any other element type.</summary>
    public static FeatureStorageDtype FromSafetensors(SafetensorsDtype dtype, string fileName) =>
        All.FirstOrDefault(d => d.Safetensors == dtype)
        ?? throw new FormatException($"{fileName}: features are {dtype}, not one of {string.Join(", ", All.Select(d => d.Safetensors))}");

    /// <summary>
    /// <paramref name="values"/> as little-endian bytes of this dtype, each rounded to the nearest representable value,
    /// ties to even (what torch's <c>.to(bfloat16)</c> and <c>.half()</c> do; the tests check it against torch).
    /// </summary>
    public byte[] Encode(ReadOnlySpan<float> values)
    {
        if (Safetensors == SafetensorsDtype.F32 && BitConverter.IsLittleEndian)
        {
            return System.Runtime.InteropServices.MemoryMarshal.AsBytes(values).ToArray();
        }
        var bytes = new byte[(long)values.Length * BytesPerValue];
        Span<byte> target = bytes;
        for (int i = 0; i < values.Length; i++)
        {
            switch (Safetensors)
            {
                case SafetensorsDtype.F32:
                    BinaryPrimitives.WriteSingleLittleEndian(target[(i * 4)..], values[i]);
                    break;
                case SafetensorsDtype.BF16:
                    BinaryPrimitives.WriteUInt16LittleEndian(target[(i * 2)..], ToBFloat16Bits(values[i]));
                    break;
                default:
                    // System.Half's conversion rounds to nearest even, as IEEE 754 and torch do.
                    BinaryPrimitives.WriteHalfLittleEndian(target[(i * 2)..], (Half)values[i]);
                    break;
            }
        }
        return bytes;
    }

    /// <summary>Widens little-endian bytes of this dtype to float32 (exact: every bf16 and fp16 value is a float32).</summary>
    public void Decode(ReadOnlySpan<byte> bytes, Span<float> destination)
    {
        if (bytes.Length != (long)destination.Length * BytesPerValue)
        {
            throw new ArgumentException($"{bytes.Length} bytes are not {destination.Length} {Name} values", nameof(bytes));
        }
        for (int i = 0; i < destination.Length; i++)
        {
            destination[i] = Safetensors switch
            {
                SafetensorsDtype.F32 => BinaryPrimitives.ReadSingleLittleEndian(bytes[(i * 4)..]),
                // bfloat16 is the top half of a float32.
                SafetensorsDtype.BF16 => BitConverter.UInt32BitsToSingle((uint)BinaryPrimitives.ReadUInt16LittleEndian(bytes[(i * 2)..]) << 16),
                _ => (float)BinaryPrimitives.ReadHalfLittleEndian(bytes[(i * 2)..]),
            };
        }
    }

    /// <summary>
    /// The top 16 bits of the float32, rounded to nearest even on the 16 dropped: add 0x7FFF plus the lowest kept bit,
    /// then truncate. A carry into the exponent is the correct rounding up (to the next binade, or to infinity). NaN is
    /// kept a NaN (quiet) rather than rounded, which could carry it into infinity.
    /// </summary>
    private static ushort ToBFloat16Bits(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value))
        {
            return (ushort)((bits >> 16) | 0x0040);
        }
        uint roundingBias = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + roundingBias) >> 16);
    }

    public override string ToString() => Name;
}
