using SkiaSharp;

namespace Cluster.TestSupport.Training;

/// <summary>
/// A small, separable image classification problem as real PNG files in an ImageFolder: reddish horizontal stripes
/// against bluish vertical ones, each image with its own phase and shade. Training tests of every strategy learn it.
/// </summary>
public static class StripeImages
{
    public static readonly string[] Classes = ["horizontal", "vertical"];

    /// <summary>Writes <paramref name="perClass"/> images per class (of <paramref name="classes"/>, default both) under <paramref name="folder"/>.</summary>
    public static void Write(string folder, int perClass, int side = 40, int seed = 0, IReadOnlyList<string>? classes = null)
    {
        var random = new Random(seed);
        foreach (string label in classes ?? Classes)
        {
            Directory.CreateDirectory(Path.Combine(folder, label));
            for (int i = 0; i < perClass; i++)
            {
                using var bitmap = new SKBitmap(side, side, SKColorType.Rgba8888, SKAlphaType.Opaque);
                int phase = random.Next(8);
                int shade = random.Next(60);
                for (int y = 0; y < side; y++)
                {
                    for (int x = 0; x < side; x++)
                    {
                        bool on = ((label == "horizontal" ? y : x) + phase) / 4 % 2 == 0;
                        byte v = (byte)(on ? 200 + shade / 2 : 40 + shade);
                        bitmap.SetPixel(x, y, label == "horizontal" ? new SKColor(v, (byte)(v / 3), 40) : new SKColor(40, (byte)(v / 3), v));
                    }
                }
                using SKData png = bitmap.Encode(SKEncodedImageFormat.Png, 100);
                File.WriteAllBytes(Path.Combine(folder, label, $"{label}{i:D3}.png"), png.ToArray());
            }
        }
    }
}
