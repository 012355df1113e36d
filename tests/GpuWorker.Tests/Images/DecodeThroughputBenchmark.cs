using System.Diagnostics;
using Cluster.GpuWorker.Images;
using Cluster.GpuWorker.Models;
using Cluster.TestSupport;
using Shouldly;
using SkiaSharp;
using Xunit.Abstractions;

namespace Cluster.GpuWorker.Tests.Images;

/// <summary>
/// Decode throughput, ImageNet preprocessing (shorter side 256, crop 224), on photo-like JPEGs of three sizes: one
/// decoder on one thread, then the pipeline on every core. Run with
/// <c>CLUSTER_BENCHMARKS=1 dotnet test tests/GpuWorker.Tests -c Release --filter DecodeThroughputBenchmark --logger "console;verbosity=detailed"</c>
/// (Release: a Debug build runs the pixel loops several times slower).
/// </summary>
public sealed class DecodeThroughputBenchmark(ITestOutputHelper output) : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("decode-benchmark-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [BenchmarkFact]
    public async Task Decode_throughput_of_jpegs_to_224_crops()
    {
        var p = Preprocessing.ImageNet();
        foreach (var (width, height, count) in new[] { (256, 256, 400), (500, 375, 200), (4000, 3000, 20) })
        {
            var paths = Enumerable.Range(0, count).Select(i => WritePhotoLikeJpeg(width, height, i)).ToList();
            var decoder = new ImageDecoder(new ImageDecoderOptions { Root = _root });
            var destination = new float[ImageDecoder.ImageLength(p)];
            decoder.Decode(paths[0], p, destination).IsOk.ShouldBeTrue();

            var watch = Stopwatch.StartNew();
            foreach (var path in paths)
            {
                decoder.Decode(path, p, destination).IsOk.ShouldBeTrue();
            }

            var oneCore = count / watch.Elapsed.TotalSeconds;

            var pipeline = new ImageBatchPipeline(p, new ImagePipelineOptions { Decoder = new ImageDecoderOptions { Root = _root } });
            watch.Restart();
            var images = 0;
            await foreach (var batch in pipeline.RunAsync(paths))
            {
                images += batch.Count;
                batch.Dispose();
            }

            var allCores = images / watch.Elapsed.TotalSeconds;
            images.ShouldBe(count);
            var size = new FileInfo(Path.Combine(_root, paths[0])).Length;
            output.WriteLine(
                $"{width}x{height} JPEG (~{size / 1024} KB) -> 224: {oneCore:F0} images/s on one core; "
                + $"pipeline with {pipeline.Decoders} decoders: {allCores:F0} images/s");
        }
    }

    /// <summary>Smooth gradients, a few shapes and mild noise: compresses like a photo (tens of KB at 256x256).</summary>
    private string WritePhotoLikeJpeg(int width, int height, int seed)
    {
        var random = new Random(seed);
        var info = new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Opaque);
        using var bitmap = new SKBitmap(info);
        using (var canvas = new SKCanvas(bitmap))
        {
            using var paint = new SKPaint { IsAntialias = true };
            paint.Shader = SKShader.CreateLinearGradient(
                new SKPoint(0, 0),
                new SKPoint(width, height),
                [new SKColor((uint)random.Next()).WithAlpha(255), new SKColor((uint)random.Next()).WithAlpha(255)],
                SKShaderTileMode.Clamp);
            canvas.DrawRect(0, 0, width, height, paint);
            paint.Shader = null;
            for (var i = 0; i < 12; i++)
            {
                paint.Color = new SKColor((uint)random.Next()).WithAlpha(160);
                canvas.DrawCircle(random.Next(width), random.Next(height), random.Next(width / 20, width / 4), paint);
            }
        }

        var pixels = bitmap.GetPixelSpan().ToArray();
        for (var i = 0; i < pixels.Length; i++)
        {
            pixels[i] = (byte)Math.Clamp(pixels[i] + random.Next(-4, 5), 0, 255);
        }

        var name = $"{width}x{height}-{seed}.jpg";
        using var noisy = SKImage.FromPixelCopy(info, pixels);
        using var data = noisy.Encode(SKEncodedImageFormat.Jpeg, 90);
        File.WriteAllBytes(Path.Combine(_root, name), data.ToArray());
        return name;
    }
}
