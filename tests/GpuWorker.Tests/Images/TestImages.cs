using System.Buffers.Binary;
using SkiaSharp;

namespace Cluster.GpuWorker.Tests.Images;

/// <summary>Images made on the spot with SkiaSharp, so tests need no fixture files and state exactly what is in them.</summary>
internal static class TestImages
{
    public static byte[] Encode(int width, int height, Func<int, int, SKColor> color, SKEncodedImageFormat format = SKEncodedImageFormat.Png, int quality = 100)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        for (var y = 0; y < height; y++)
        {
            for (var x = 0; x < width; x++)
            {
                bitmap.SetPixel(x, y, color(x, y));
            }
        }

        using var data = bitmap.Encode(format, quality);
        return data.ToArray();
    }

    /// <summary>An 8-bit grayscale PNG (colour type 0).</summary>
    public static byte[] GrayPng(int width, int height, Func<int, int, byte> value)
    {
        var pixels = new byte[width * height];
        for (var y = 0; y < height; y++)
        {
            for (var x = 0; x < width; x++)
            {
                pixels[(y * width) + x] = value(x, y);
            }
        }

        var info = new SKImageInfo(width, height, SKColorType.Gray8, SKAlphaType.Opaque);
        using var bitmap = new SKBitmap();
        bitmap.InstallPixels(info, System.Runtime.InteropServices.Marshal.UnsafeAddrOfPinnedArrayElement(pixels, 0)).ShouldBeTrueOrThrow();
        using var data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
        GC.KeepAlive(pixels);
        return data.ToArray();
    }

    /// <summary>Random pixels: compresses badly, so a JPEG of it is large and cutting it in half cuts the pixel data.</summary>
    public static byte[] Noise(int width, int height, int seed, SKEncodedImageFormat format = SKEncodedImageFormat.Jpeg)
    {
        var random = new Random(seed);
        return Encode(width, height, (_, _) => new SKColor((byte)random.Next(256), (byte)random.Next(256), (byte)random.Next(256)), format, 90);
    }

    /// <summary>A valid 1x1 PNG whose header is rewritten to claim <paramref name="width"/>×<paramref name="height"/>, CRC and all.</summary>
    public static byte[] PngClaiming(int width, int height)
    {
        var png = Encode(1, 1, (_, _) => SKColors.Red);

        // After the 8-byte signature: IHDR's length (4), type (4), data (13: width, height, ...), CRC over type + data.
        "IHDR"u8.SequenceEqual(png.AsSpan(12, 4)).ShouldBeTrueOrThrow();
        BinaryPrimitives.WriteInt32BigEndian(png.AsSpan(16), width);
        BinaryPrimitives.WriteInt32BigEndian(png.AsSpan(20), height);
        BinaryPrimitives.WriteUInt32BigEndian(png.AsSpan(29), Crc32(png.AsSpan(12, 17)));
        return png;
    }

    private static uint Crc32(ReadOnlySpan<byte> bytes)
    {
        var crc = 0xFFFFFFFFu;
        foreach (var b in bytes)
        {
            crc ^= b;
            for (var k = 0; k < 8; k++)
            {
                crc = (crc & 1) != 0 ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
            }
        }

        return ~crc;
    }

    private static void ShouldBeTrueOrThrow(this bool condition)
    {
        if (!condition)
        {
            throw new InvalidOperationException("Building a test image failed.");
        }
    }
}
