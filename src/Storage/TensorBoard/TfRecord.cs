using System.Buffers;
using System.Buffers.Binary;

namespace Cluster.Storage.TensorBoard;

/// <summary>
/// TFRecord framing, which event files use: per record a uint64 length (little-endian), the masked CRC-32C of
/// those 8 bytes, the data, and the masked CRC-32C of the data.
/// </summary>
internal static class TfRecord
{
    private const int LengthBytes = 8;
    private const int CrcBytes = 4;
    private const int HeaderBytes = LengthBytes + CrcBytes;

    // TFRecord's "masked" CRC: rotated and offset so that a CRC stored next to the bytes it covers does not
    // checksum to a fixed value when CRCs are computed over data that itself contains CRCs.
    public static uint MaskedCrc32C(ReadOnlySpan<byte> bytes)
    {
        var crc = Crc32C.Compute(bytes);
        return unchecked(((crc >> 15) | (crc << 17)) + 0xA282EAD8);
    }

    public static void Append(IBufferWriter<byte> output, ReadOnlySpan<byte> data)
    {
        var header = output.GetSpan(HeaderBytes)[..HeaderBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(header, (ulong)data.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(header[LengthBytes..], MaskedCrc32C(header[..LengthBytes]));
        output.Advance(HeaderBytes);

        output.Write(data);

        var footer = output.GetSpan(CrcBytes)[..CrcBytes];
        BinaryPrimitives.WriteUInt32LittleEndian(footer, MaskedCrc32C(data));
        output.Advance(CrcBytes);
    }

    /// <summary>
    /// The records of one file's bytes, each with the offset it starts at. A record the file ends inside of
    /// is a torn tail (a writer killed mid-append, or one still writing) and ends the sequence quietly; a
    /// complete record whose length or data fails its CRC throws, since that is corruption, not a crash.
    /// </summary>
    public static IEnumerable<(long Offset, ReadOnlyMemory<byte> Data)> Read(ReadOnlyMemory<byte> file, string fileName)
    {
        var offset = 0;
        while (file.Length - offset >= HeaderBytes)
        {
            var header = file.Span.Slice(offset, HeaderBytes);
            var length = BinaryPrimitives.ReadUInt64LittleEndian(header);
            var expectedLengthCrc = BinaryPrimitives.ReadUInt32LittleEndian(header[LengthBytes..]);
            var actualLengthCrc = MaskedCrc32C(header[..LengthBytes]);
            if (actualLengthCrc != expectedLengthCrc)
            {
                throw new TensorBoardFormatException(
                    fileName,
                    offset,
                    $"length CRC-32C is {actualLengthCrc:x8} (masked), the record says {expectedLengthCrc:x8}");
            }

            var remaining = (ulong)(file.Length - offset - HeaderBytes);
            if (length > remaining || remaining - length < CrcBytes)
            {
                yield break;
            }

            var data = file.Slice(offset + HeaderBytes, (int)length);
            var expectedDataCrc = BinaryPrimitives.ReadUInt32LittleEndian(file.Span[(offset + HeaderBytes + (int)length)..]);
            var actualDataCrc = MaskedCrc32C(data.Span);
            if (actualDataCrc != expectedDataCrc)
            {
                throw new TensorBoardFormatException(
                    fileName,
                    offset,
                    $"data CRC-32C is {actualDataCrc:x8} (masked), the record says {expectedDataCrc:x8}");
            }

            yield return (offset, data);
            offset += HeaderBytes + (int)length + CrcBytes;
        }
    }
}
