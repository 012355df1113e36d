using Cluster.GpuWorker.Models;
using SkiaSharp;

namespace Cluster.GpuWorker.Tests.Onnx;

/// <summary>The committed test photos (Fixtures/images, see Fixtures/README.md), decoded and prepared for a model.</summary>
internal static class FixtureImages
{
    public static string Directory => Path.Combine(AppContext.BaseDirectory, "Fixtures", "images");

    public static IReadOnlyList<string> All => [.. System.IO.Directory.GetFiles(Directory, "*.jpg").Order(StringComparer.Ordinal)];

    /// <summary>
    /// RGB planes (3×size×size floats, 0..255): the shorter side scaled to <paramref name="resizeTo"/>, then the
    /// centre square of <paramref name="size"/>, as <see cref="Preprocessing"/> describes.
    /// </summary>
    public static float[] DecodeRgb(string path, int resizeTo, int size)
    {
        using SKBitmap decoded = SKBitmap.Decode(path) ?? throw new InvalidDataException($"{path} does not decode");
        double scale = (double)resizeTo / Math.Min(decoded.Width, decoded.Height);
        var scaledInfo = new SKImageInfo(
            Math.Max(size, (int)Math.Round(decoded.Width * scale)),
            Math.Max(size, (int)Math.Round(decoded.Height * scale)),
            SKColorType.Rgba8888,
            SKAlphaType.Unpremul);
        using SKBitmap scaled = decoded.Resize(scaledInfo, new SKSamplingOptions(SKFilterMode.Linear, SKMipmapMode.Linear));
        int left = (scaled.Width - size) / 2;
        int top = (scaled.Height - size) / 2;
        var planes = new float[3 * size * size];
        for (int y = 0; y < size; y++)
        {
            for (int x = 0; x < size; x++)
            {
                SKColor pixel = scaled.GetPixel(left + x, top + y);
                planes[(0 * size + y) * size + x] = pixel.Red;
                planes[(1 * size + y) * size + x] = pixel.Green;
                planes[(2 * size + y) * size + x] = pixel.Blue;
            }
        }
        return planes;
    }

    /// <summary>RGB planes to a model's input: channel order, scale, then the mean image or per-channel mean and std.</summary>
    public static float[] Prepare(float[] rgb, Preprocessing preprocessing)
    {
        int plane = rgb.Length / 3;
        var prepared = new float[rgb.Length];
        for (int c = 0; c < 3; c++)
        {
            int source = preprocessing.Order == ColorOrder.Bgr ? 2 - c : c;
            for (int i = 0; i < plane; i++)
            {
                float value = rgb[source * plane + i] * preprocessing.Scale;
                prepared[c * plane + i] = preprocessing.MeanImage is { } meanImage
                    ? value - meanImage[c * plane + i]
                    : (value - preprocessing.Mean[c]) / preprocessing.Std[c];
            }
        }
        return prepared;
    }
}
