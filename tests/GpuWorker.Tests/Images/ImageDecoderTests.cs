using System.Runtime.Versioning;
using Cluster.GpuWorker.Images;
using Cluster.GpuWorker.Models;
using Cluster.Storage.Datasets;
using Cluster.TestSupport;
using Shouldly;
using SkiaSharp;

namespace Cluster.GpuWorker.Tests.Images;

// Symlinks, FIFOs and Unix file modes: the cluster runs on Linux.
[UnsupportedOSPlatform("windows")]
public sealed class ImageDecoderTests : IDisposable
{
    // Values in 0..1, unchanged by mean and std: what a test expects is the pixel byte / 255.
    private static readonly Preprocessing s_unit16 = new("unit-16", 16, 16, ColorOrder.Rgb, 1f / 255f, [0f, 0f, 0f], [1f, 1f, 1f]);

    private readonly string _folder;
    private readonly string _root;

    public ImageDecoderTests()
    {
        _folder = Path.Combine(Path.GetTempPath(), "image-decoder-tests-" + Guid.NewGuid().ToString("N"));
        _root = Path.Combine(_folder, "dataset");
        Directory.CreateDirectory(_root);
    }

    public void Dispose()
    {
        foreach (var file in Directory.EnumerateFiles(_folder, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.ReparsePoint }))
        {
            File.SetUnixFileMode(file, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }

        Directory.Delete(_folder, recursive: true);
    }

    [Fact]
    public void Known_pixels_come_out_normalised_per_channel_at_their_positions()
    {
        var png = TestImages.Encode(4, 4, (x, y) => new SKColor((byte)((40 * x) + y), (byte)(100 + x), (byte)(250 - (7 * y))));
        var p = new Preprocessing("t", 4, 4, ColorOrder.Rgb, 1f / 255f, [0.5f, 0.25f, 0.125f], [0.5f, 0.25f, 2f]);
        var output = new float[3 * 4 * 4];

        var result = new ImageDecoder().Decode(png, p, output);

        result.IsOk.ShouldBeTrue(result.ToString());
        (result.Width, result.Height, result.DecodedWidth, result.DecodedHeight).ShouldBe((4, 4, 4, 4));
        for (var y = 0; y < 4; y++)
        {
            for (var x = 0; x < 4; x++)
            {
                At(output, 4, 0, y, x).ShouldBe(((((40 * x) + y) * (1f / 255f)) - 0.5f) / 0.5f, 1e-6f);
                At(output, 4, 1, y, x).ShouldBe((((100 + x) * (1f / 255f)) - 0.25f) / 0.25f, 1e-6f);
                At(output, 4, 2, y, x).ShouldBe((((250 - (7 * y)) * (1f / 255f)) - 0.125f) / 2f, 1e-6f);
            }
        }
    }

    [Fact]
    public void Bgr_order_puts_blue_first_and_applies_mean_and_std_in_that_order()
    {
        var png = TestImages.Encode(4, 4, (_, _) => new SKColor(10, 20, 30));
        var p = new Preprocessing("bgr", 4, 4, ColorOrder.Bgr, 1f, [1f, 2f, 3f], [1f, 2f, 4f]);
        var output = new float[3 * 4 * 4];

        new ImageDecoder().Decode(png, p, output).IsOk.ShouldBeTrue();

        At(output, 4, 0, 2, 1).ShouldBe((30f - 1f) / 1f);
        At(output, 4, 1, 2, 1).ShouldBe((20f - 2f) / 2f);
        At(output, 4, 2, 2, 1).ShouldBe((10f - 3f) / 4f);
    }

    [Fact]
    public void A_mean_image_is_subtracted_pixel_by_pixel_instead_of_mean_and_std()
    {
        var png = TestImages.Encode(4, 4, (x, y) => new SKColor((byte)(x * 50), (byte)(y * 50), 200));
        var meanImage = Enumerable.Range(0, 3 * 4 * 4).Select(i => i * 0.5f).ToArray();
        var p = new Preprocessing("mean-image", 4, 4, ColorOrder.Bgr, 1f, [0f, 0f, 0f], [1f, 1f, 1f], meanImage);
        var output = new float[3 * 4 * 4];

        new ImageDecoder().Decode(png, p, output).IsOk.ShouldBeTrue();

        for (var y = 0; y < 4; y++)
        {
            for (var x = 0; x < 4; x++)
            {
                var i = (y * 4) + x;
                At(output, 4, 0, y, x).ShouldBe(200f - meanImage[i]);
                At(output, 4, 1, y, x).ShouldBe((y * 50f) - meanImage[16 + i]);
                At(output, 4, 2, y, x).ShouldBe((x * 50f) - meanImage[32 + i]);
            }
        }
    }

    [Fact]
    public void Grayscale_is_repeated_to_three_channels()
    {
        var png = TestImages.GrayPng(16, 16, (x, y) => (byte)((16 * y) + x));
        var output = new float[3 * 16 * 16];

        new ImageDecoder().Decode(png, s_unit16, output).IsOk.ShouldBeTrue();

        for (var c = 0; c < 3; c++)
        {
            At(output, 16, c, 5, 9).ShouldBe(((16 * 5) + 9) / 255f, 1e-6f);
            At(output, 16, c, 15, 0).ShouldBe(240 / 255f, 1e-6f);
        }
    }

    [Fact]
    public void Alpha_is_dropped_keeping_the_stored_colour_as_pil_convert_rgb_does()
    {
        var png = TestImages.Encode(16, 16, (_, _) => new SKColor(200, 100, 50, 128));
        var output = new float[3 * 16 * 16];

        new ImageDecoder().Decode(png, s_unit16, output).IsOk.ShouldBeTrue();

        At(output, 16, 0, 3, 3).ShouldBe(200 / 255f, 1e-6f);
        At(output, 16, 1, 3, 3).ShouldBe(100 / 255f, 1e-6f);
        At(output, 16, 2, 3, 3).ShouldBe(50 / 255f, 1e-6f);
    }

    [Theory]
    [InlineData(9, 6, 2, 1)] // landscape: left = round(2.5) = 2, halves to even as Python rounds
    [InlineData(10, 6, 3, 1)]
    [InlineData(6, 11, 1, 4)] // portrait: top = round(3.5) = 4
    public void The_center_crop_starts_where_torchvision_starts_it(int width, int height, int left, int top)
    {
        // The shorter side is already ResizeTo, so nothing is resampled and each value names its source pixel.
        var png = TestImages.Encode(width, height, (x, y) => new SKColor((byte)(x * 20), (byte)(y * 20), 77));
        var p = new Preprocessing("crop", 4, 6, ColorOrder.Rgb, 1f, [0f, 0f, 0f], [1f, 1f, 1f]);
        var output = new float[3 * 4 * 4];

        new ImageDecoder().Decode(png, p, output).IsOk.ShouldBeTrue();

        for (var y = 0; y < 4; y++)
        {
            for (var x = 0; x < 4; x++)
            {
                At(output, 4, 0, y, x).ShouldBe((x + left) * 20f);
                At(output, 4, 1, y, x).ShouldBe((y + top) * 20f);
            }
        }
    }

    [Fact]
    public void Resizing_keeps_each_region_where_it_was_with_and_without_a_crop()
    {
        // 64x32: red left half, blue right half.
        var png = TestImages.Encode(64, 32, (x, _) => x < 32 ? new SKColor(255, 0, 0) : new SKColor(0, 0, 255));
        var output = new float[3 * 16 * 16];

        new ImageDecoder().Decode(png, s_unit16, output).IsOk.ShouldBeTrue();

        // ResizeTo == InputSize is a plain resize to a square: 64x32 -> 16x16, red in columns 0..7, blue 8..15.
        for (var y = 0; y < 16; y++)
        {
            for (var x = 0; x < 6; x++)
            {
                At(output, 16, 0, y, x).ShouldBe(1f, 0.02f);
                At(output, 16, 2, y, x).ShouldBe(0f, 0.02f);
                At(output, 16, 0, y, 15 - x).ShouldBe(0f, 0.02f);
                At(output, 16, 2, y, 15 - x).ShouldBe(1f, 0.02f);
            }
        }

        var cropped = new float[3 * 8 * 8];
        var resizeThenCrop = new Preprocessing("resize-16-crop-8", 8, 16, ColorOrder.Rgb, 1f / 255f, [0f, 0f, 0f], [1f, 1f, 1f]);
        new ImageDecoder().Decode(png, resizeThenCrop, cropped).IsOk.ShouldBeTrue();

        // Shorter side 32 -> 16 makes it 32x16; the 8x8 crop takes columns 12..19 and rows 4..11: red, then blue.
        for (var y = 0; y < 8; y++)
        {
            for (var x = 0; x < 3; x++)
            {
                At(cropped, 8, 0, y, x).ShouldBe(1f, 0.02f);
                At(cropped, 8, 2, y, 7 - x).ShouldBe(1f, 0.02f);
            }
        }
    }

    [Theory]
    [InlineData(13, 9, 6, 4, new byte[] { 153, 210, 95, 75, 168, 200, 85, 90, 186, 166, 51, 108, 195, 136, 66, 123, 70, 78, 86, 94, 111, 119, 127, 135, 157, 165, 173, 181, 198, 206, 214, 222, 24, 38, 59, 82, 45, 59, 80, 103, 83, 97, 118, 141, 130, 144, 165, 188 })]
    [InlineData(40, 23, 7, 5, new byte[] { 95, 157, 93, 160, 97, 113, 147, 105, 145, 100, 143, 118, 136, 124, 126, 156, 93, 156, 100, 154, 153, 97, 161, 97, 157, 181, 167, 165, 134, 104, 88, 76, 84, 91, 106, 136, 152, 166, 177, 171, 166, 139, 124, 94, 75, 83, 87, 103, 120, 136, 123, 127, 132, 131, 121, 129, 132, 123, 107, 116, 128, 135, 128, 122, 119, 128, 127, 118, 126, 125, 129, 127, 131, 118, 123 })]
    public void Resize_and_crop_give_exactly_what_torchvision_gives_with_pillow(int width, int height, int resizeTo, int inputSize, byte[] expected)
    {
        // Expected values: Pillow 9.4, Image.resize((w, h), BILINEAR) to torchvision's Resize(resizeTo) size, then
        // CenterCrop(inputSize), as C×H×W bytes, for the image below (generated the same way in numpy).
        var png = TestImages.Encode(width, height, (x, y) => new SKColor((byte)(((x * 37) + (y * 11)) % 256), (byte)(((x * 5) + (y * 29)) % 256), (byte)(((x * x) + (y * y * 3)) % 256)));
        var p = new Preprocessing("bytes", inputSize, resizeTo, ColorOrder.Rgb, 1f, [0f, 0f, 0f], [1f, 1f, 1f]);
        var output = new float[3 * inputSize * inputSize];

        new ImageDecoder().Decode(png, p, output).IsOk.ShouldBeTrue();

        output.ShouldBe(expected.Select(b => (float)b).ToArray());
    }

    [Fact]
    public void A_large_jpeg_is_decoded_at_a_reduced_scale_that_still_covers_the_target()
    {
        var jpeg = Quadrants(2000, 1600, SKEncodedImageFormat.Jpeg);
        var output = new float[3 * 224 * 224];
        var p = new Preprocessing("unit-224", 224, 256, ColorOrder.Rgb, 1f / 255f, [0f, 0f, 0f], [1f, 1f, 1f]);

        var result = new ImageDecoder().Decode(jpeg, p, output);

        // 1/4 gives 500x400, whose shorter side still reaches 256; 1/8 (250x200) would not.
        result.IsOk.ShouldBeTrue(result.ToString());
        (result.Width, result.Height, result.DecodedWidth, result.DecodedHeight).ShouldBe((2000, 1600, 500, 400));
        At(output, 224, 0, 20, 20).ShouldBe(1f, 0.03f);
        At(output, 224, 1, 20, 200).ShouldBe(1f, 0.03f);
        At(output, 224, 2, 200, 20).ShouldBe(1f, 0.03f);
        At(output, 224, 0, 200, 200).ShouldBe(0f, 0.03f);
    }

    [Fact]
    public void A_png_is_decoded_at_full_size()
    {
        var png = Quadrants(600, 500, SKEncodedImageFormat.Png);
        var output = new float[3 * 224 * 224];

        var result = new ImageDecoder().Decode(png, Preprocessing.ImageNet(), output);

        (result.DecodedWidth, result.DecodedHeight).ShouldBe((600, 500));
    }

    [Fact]
    public void A_path_a_span_and_a_stream_decode_to_the_same_values()
    {
        var jpeg = TestImages.Noise(300, 200, seed: 3);
        var path = Path.Combine(_root, "noise.jpg");
        File.WriteAllBytes(path, jpeg);
        var decoder = new ImageDecoder(new ImageDecoderOptions { Root = _root });
        var p = Preprocessing.ImageNet(64);
        var fromPath = new float[ImageDecoder.ImageLength(p)];
        var fromSpan = new float[fromPath.Length];
        var fromStream = new float[fromPath.Length];

        decoder.Decode("noise.jpg", p, fromPath).IsOk.ShouldBeTrue();
        decoder.Decode(jpeg, p, fromSpan).IsOk.ShouldBeTrue();
        using (var stream = new MemoryStream(jpeg))
        {
            decoder.Decode(stream, p, fromStream).IsOk.ShouldBeTrue();
        }

        fromSpan.ShouldBe(fromPath);
        fromStream.ShouldBe(fromPath);
    }

    [Fact]
    public void Hostile_files_are_each_skipped_with_their_own_reason()
    {
        var jpeg = TestImages.Noise(256, 256, seed: 1);
        var png = TestImages.Noise(128, 128, seed: 2, SKEncodedImageFormat.Png);
        Write("good.jpg", jpeg);
        Write("empty.jpg", []);
        Write("half.jpg", jpeg[..(jpeg.Length / 2)]);
        Write("half.png", png[..(png.Length / 2)]);
        Write("header-only.png", png[..20]);
        Write("random.jpg", RandomBytes(5000, seed: 4));
        Write("notes.txt", "not an image, just text\n"u8.ToArray());
        Write("scan.tif", [(byte)'I', (byte)'I', 42, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        Write("bomb.png", TestImages.PngClaiming(50_000, 50_000));
        Write("strip.png", TestImages.Encode(1, 20_000, (_, _) => SKColors.Gray));
        Directory.CreateDirectory(Path.Combine(_root, "folder.jpg"));
        File.WriteAllBytes(Path.Combine(_folder, "outside.jpg"), jpeg);
        File.CreateSymbolicLink(Path.Combine(_root, "escape.jpg"), Path.Combine(_folder, "outside.jpg"));
        File.CreateSymbolicLink(Path.Combine(_root, "relative-escape.jpg"), "../outside.jpg");
        File.CreateSymbolicLink(Path.Combine(_root, "inside-link.jpg"), "good.jpg");
        var decoder = new ImageDecoder(new ImageDecoderOptions { Root = _root, MaxPixels = 10_000_000 });
        var p = Preprocessing.ImageNet();
        var output = new float[ImageDecoder.ImageLength(p)];

        var reasons = new[]
        {
            "good.jpg", "inside-link.jpg", "empty.jpg", "half.jpg", "half.png", "header-only.png", "random.jpg", "notes.txt",
            "scan.tif", "bomb.png", "strip.png", "folder.jpg", "escape.jpg", "relative-escape.jpg", "../outside.jpg", "missing.jpg",
        }.ToDictionary(name => name, name => decoder.Decode(name, p, output));

        reasons.ToDictionary(r => r.Key, r => r.Value.Reason).ShouldBe(new Dictionary<string, ImageSkipReason?>
        {
            ["good.jpg"] = null,
            ["inside-link.jpg"] = null,
            ["empty.jpg"] = ImageSkipReason.Empty,
            ["half.jpg"] = ImageSkipReason.Truncated,
            ["half.png"] = ImageSkipReason.Truncated,
            ["header-only.png"] = ImageSkipReason.Truncated,
            ["random.jpg"] = ImageSkipReason.NotAnImage,
            ["notes.txt"] = ImageSkipReason.NotAnImage,
            ["scan.tif"] = ImageSkipReason.UnsupportedFormat,
            ["bomb.png"] = ImageSkipReason.TooLarge,
            ["strip.png"] = ImageSkipReason.TooLarge,
            ["folder.jpg"] = ImageSkipReason.Unreadable,
            ["escape.jpg"] = ImageSkipReason.OutsideRoot,
            ["relative-escape.jpg"] = ImageSkipReason.OutsideRoot,
            ["../outside.jpg"] = ImageSkipReason.OutsideRoot,
            ["missing.jpg"] = ImageSkipReason.Missing,
        });
        reasons.Values.Where(r => !r.IsOk).ShouldAllBe(r => !string.IsNullOrWhiteSpace(r.Message));
        reasons["bomb.png"].Message!.ShouldContain("50000x50000");
        reasons["scan.tif"].Message!.ShouldContain("TIFF");
    }

    [Fact]
    public void A_decompression_bomb_is_refused_from_its_header_without_allocating_its_pixels()
    {
        var bomb = TestImages.PngClaiming(50_000, 50_000);
        var decoder = new ImageDecoder();
        var output = new float[ImageDecoder.ImageLength(Preprocessing.ImageNet())];
        decoder.Decode(bomb, Preprocessing.ImageNet(), output);
        var before = GC.GetAllocatedBytesForCurrentThread();

        var result = decoder.Decode(bomb, Preprocessing.ImageNet(), output);

        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        result.Reason.ShouldBe(ImageSkipReason.TooLarge);
        (result.Width, result.Height).ShouldBe((50_000, 50_000));

        // 10 GB of pixels were claimed; a few kilobytes of strings and wrappers were spent.
        allocated.ShouldBeLessThan(64 * 1024);
    }

    [Fact]
    public async Task A_fifo_is_skipped_as_empty_instead_of_blocking_the_decoder()
    {
        var fifo = Path.Combine(_root, "pipe.jpg");
        using (var mkfifo = System.Diagnostics.Process.Start("mkfifo", [fifo]))
        {
            mkfifo.WaitForExit();
        }

        var decode = Task.Run(() => new ImageDecoder().Decode(fifo, Preprocessing.ImageNet(), new float[ImageDecoder.ImageLength(Preprocessing.ImageNet())]));

        (await Task.WhenAny(decode, Task.Delay(TimeSpan.FromSeconds(30)))).ShouldBe(decode, "the decoder blocked on a FIFO");
        (await decode).Reason.ShouldBe(ImageSkipReason.Empty);
    }

    [UnprivilegedFact]
    public void A_file_without_read_permission_is_skipped_as_unreadable()
    {
        var path = Write("locked.jpg", TestImages.Noise(64, 64, seed: 5));
        File.SetUnixFileMode(path, UnixFileMode.None);

        var result = new ImageDecoder().Decode(path, Preprocessing.ImageNet(), new float[ImageDecoder.ImageLength(Preprocessing.ImageNet())]);

        result.Reason.ShouldBe(ImageSkipReason.Unreadable);
    }

    [Fact]
    public void A_destination_of_the_wrong_size_is_a_caller_error()
    {
        Should.Throw<ArgumentException>(() => new ImageDecoder().Decode(TestImages.Noise(8, 8, 1), Preprocessing.ImageNet(), new float[10]));
    }

    private static float At(float[] chw, int size, int channel, int y, int x) => chw[(((channel * size) + y) * size) + x];

    private string Write(string name, byte[] bytes)
    {
        var path = Path.Combine(_root, name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private static byte[] RandomBytes(int count, int seed)
    {
        var bytes = new byte[count];
        new Random(seed).NextBytes(bytes);

        // Random bytes may start like a format's signature by chance; 0x42 ('B') starts none Skia knows but BMP's "BM".
        bytes[0] = 0x5A;
        return bytes;
    }

    /// <summary>Red top-left, green top-right, blue bottom-left, black bottom-right.</summary>
    private static byte[] Quadrants(int width, int height, SKEncodedImageFormat format)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Opaque));
        using (var canvas = new SKCanvas(bitmap))
        {
            using var paint = new SKPaint();
            canvas.Clear(SKColors.Black);
            paint.Color = new SKColor(255, 0, 0);
            canvas.DrawRect(0, 0, width / 2f, height / 2f, paint);
            paint.Color = new SKColor(0, 255, 0);
            canvas.DrawRect(width / 2f, 0, width / 2f, height / 2f, paint);
            paint.Color = new SKColor(0, 0, 255);
            canvas.DrawRect(0, height / 2f, width / 2f, height / 2f, paint);
        }

        using var data = bitmap.Encode(format, 95);
        return data.ToArray();
    }
}
