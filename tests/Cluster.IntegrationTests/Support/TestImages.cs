using SkiaSharp;

namespace Cluster.IntegrationTests.Support;

/// <summary>Image folders written by the tests: real encoded images, and the hostile files a real dataset contains.</summary>
public static class TestImages
{
    /// <summary>A JPEG or PNG of a smooth colour gradient (distinct per seed), like a photo to a decoder.</summary>
    public static void Write(string path, int seed, int width = 320, int height = 240, SKEncodedImageFormat format = SKEncodedImageFormat.Jpeg)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using var bitmap = new SKBitmap(width, height, SKColorType.Rgba8888, SKAlphaType.Opaque);
        var random = new Random(seed);
        int r0 = random.Next(256), g0 = random.Next(256), b0 = random.Next(256);
        for (int y = 0; y < height; y++)
        {
            for (int x = 0; x < width; x++)
            {
                bitmap.SetPixel(x, y, new SKColor((byte)((r0 + x) % 256), (byte)((g0 + y) % 256), (byte)((b0 + x * y / 64) % 256)));
            }
        }
        using SKData data = bitmap.Encode(format, 90);
        File.WriteAllBytes(path, data.ToArray());
    }

    /// <summary>
    /// A two-class ImageFolder with <paramref name="goodPerClass"/> good images per class, plus (when asked) one file of
    /// each hostile kind. Returns the relative paths of the hostile files with the skip reason code each must get.
    /// </summary>
    public static Dictionary<string, string> WriteDataset(string root, int goodPerClass, bool hostile)
    {
        for (int i = 0; i < goodPerClass; i++)
        {
            Write(Path.Combine(root, "cats", $"cat{i:D3}.jpg"), seed: i);
            Write(Path.Combine(root, "dogs", $"dog{i:D3}.png"), seed: 1000 + i, format: SKEncodedImageFormat.Png);
        }
        var expected = new Dictionary<string, string>();
        if (!hostile)
        {
            return expected;
        }
        File.WriteAllBytes(Path.Combine(root, "cats", "empty.jpg"), []);
        expected["cats/empty.jpg"] = "empty";
        byte[] whole = File.ReadAllBytes(Path.Combine(root, "cats", "cat000.jpg"));
        File.WriteAllBytes(Path.Combine(root, "cats", "truncated.jpg"), whole[..(whole.Length / 2)]);
        expected["cats/truncated.jpg"] = "truncated";
        File.WriteAllText(Path.Combine(root, "dogs", "notes.jpg"), "this is not an image\n");
        expected["dogs/notes.jpg"] = "not-an-image";
        string outside = Path.Combine(Path.GetDirectoryName(root)!, "outside-" + Path.GetFileName(root) + ".jpg");
        Write(outside, seed: 7);
        File.CreateSymbolicLink(Path.Combine(root, "dogs", "escape.jpg"), outside);
        expected["dogs/escape.jpg"] = "outside-root";
        return expected;
    }
}
