namespace Cluster.Storage.TensorBoard;

/// <summary>
/// CRC-32C (Castagnoli: reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFFFFFF), the checksum
/// TFRecord framing uses. System.IO.Hashing 10.0.5 offers CRC-32 and CRC-64 but not CRC-32C, hence this small
/// table-driven one; event records are tens of bytes, so a byte-at-a-time loop is fast enough.
/// </summary>
public static class Crc32C
{
    private const uint ReflectedPolynomial = 0x82F63B78;

    private static readonly uint[] Table = BuildTable();

    /// <summary>The CRC-32C of <paramref name="bytes"/>; "123456789" gives the standard check value 0xE3069283.</summary>
    public static uint Compute(ReadOnlySpan<byte> bytes)
    {
        var crc = 0xFFFFFFFFu;
        foreach (var b in bytes)
        {
            crc = Table[(byte)(crc ^ b)] ^ (crc >> 8);
        }

        return ~crc;
    }

    private static uint[] BuildTable()
    {
        var table = new uint[256];
        for (uint n = 0; n < 256; n++)
        {
            var crc = n;
            for (var bit = 0; bit < 8; bit++)
            {
                crc = (crc & 1) != 0 ? (crc >> 1) ^ ReflectedPolynomial : crc >> 1;
            }

            table[n] = crc;
        }

        return table;
    }
}
