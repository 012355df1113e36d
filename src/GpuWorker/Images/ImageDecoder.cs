using Cluster.GpuWorker.Models;
using Cluster.Storage.Datasets;
using Cluster.Storage.Files;
using Microsoft.Win32.SafeHandles;
using SkiaSharp;

namespace Cluster.GpuWorker.Images;

/// <summary>Limits and containment for <see cref="ImageDecoder"/>.</summary>
public sealed record ImageDecoderOptions
{
    /// <summary>
    /// Images whose header claims more pixels are refused before any decoding (a decompression bomb: a few
    /// kilobytes of PNG can claim 50000×50000). 100 megapixels passes any camera photo.
    /// </summary>
    public long MaxPixels { get; init; } = 100_000_000;

    /// <summary>Files larger than this are refused before they are read; the whole file is held while decoding.</summary>
    public long MaxFileBytes { get; init; } = 256L << 20;

    /// <summary>
    /// The dataset root: relative paths are resolved against it, and a path whose symlinks lead outside it is
    /// refused. Null: paths are taken as given (for single images a user names on the command line).
    /// </summary>
    public string? Root { get; init; }
}

/// <summary>
/// Decodes one image file into one model input: C×H×W floats, written into a buffer the caller owns (a slot of a
/// batch), so a batch is assembled without an allocation per image. Preprocessing follows torchvision's
/// Resize(shorter side) + CenterCrop + ToTensor + Normalize, which pretrained weights expect:
/// <list type="bullet">
/// <item>Any colour type becomes RGB; grayscale is repeated to three channels. Alpha is dropped, keeping the stored
/// colour (what PIL's <c>convert("RGB")</c>, and so torchvision's loader, does), not composited.</item>
/// <item>EXIF orientation and ICC profiles are ignored, as PIL ignores them unless asked: features must match
/// those of the Python pipelines the weights were trained with.</item>
/// <item>Resizing is Pillow's antialiased bilinear (see <see cref="BilinearResampler"/>), computed for the crop only.</item>
/// <item>A JPEG much larger than the target is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), the
/// smallest that keeps the shorter side at or above the target.</item>
/// </list>
/// Broken and hostile files come back as an <see cref="ImageDecodeResult"/> with a reason, never as an exception.
/// </summary>
/// <remarks>
/// Not thread-safe: it keeps its scratch buffers between calls. Use one per decoding thread.
/// JPEG DCT scaling, measured on a photo against Pillow decoding it whole and resizing to a 256 shorter side:
/// 1/4 scale 40.2 dB PSNR, full decoding 39.8 dB (the decoders differ slightly), 3/8 scale 35.0, 5/8 scale 26.0; so
/// only 1/2, 1/4 and 1/8 are used, and only when the image is at least twice the target.
/// </remarks>
public sealed class ImageDecoder
{
    private const int Channels = 3;

    // Scratch buffers above this are used once and dropped, so one huge image does not pin its size for good.
    private const long RetainedScratchBytes = 64L << 20;

    private readonly string? _root;
    private readonly BilinearResampler _resampler = new();
    private byte[]? _decoded;
    private byte[]? _cropped;

    public ImageDecoder(ImageDecoderOptions? options = null)
    {
        Options = options ?? new ImageDecoderOptions();
        ArgumentOutOfRangeException.ThrowIfLessThan(Options.MaxPixels, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(Options.MaxFileBytes, 1);

        // A file is held in one buffer while it is decoded.
        ArgumentOutOfRangeException.ThrowIfGreaterThan(Options.MaxFileBytes, Array.MaxLength);
        if (Options.Root is { } root)
        {
            if (!Directory.Exists(root))
            {
                throw new DirectoryNotFoundException($"Image root '{root}' is not a folder.");
            }

            // Resolved once: every containment check compares real paths with the real root.
            _root = Path.TrimEndingDirectorySeparator(RealPaths.Resolve(Path.GetFullPath(root), root));
        }
    }

    public ImageDecoderOptions Options { get; }

    /// <summary>How many floats one image takes: 3 × InputSize × InputSize.</summary>
    public static int ImageLength(Preprocessing preprocessing)
    {
        ArgumentNullException.ThrowIfNull(preprocessing);
        return Channels * preprocessing.InputSize * preprocessing.InputSize;
    }

    /// <summary>
    /// Decodes the file at <paramref name="path"/> (relative to <see cref="ImageDecoderOptions.Root"/> when one is
    /// set) into <paramref name="destination"/>, which must hold exactly <see cref="ImageLength"/> floats. On a
    /// skip, the destination's content is unspecified.
    /// </summary>
    public ImageDecodeResult Decode(string path, Preprocessing preprocessing, Span<float> destination)
    {
        ArgumentNullException.ThrowIfNull(path);
        Validate(preprocessing, destination);
        if (!TryOpen(path, out var handle, out var length, out var failure))
        {
            return failure;
        }

        using (handle)
        {
            if (length > Options.MaxFileBytes)
            {
                return ImageDecodeResult.Skip(ImageSkipReason.TooLarge, $"the file has {length:N0} bytes; the limit is {Options.MaxFileBytes:N0}");
            }

            // Read straight into native memory that Skia decodes from: no managed copy of the encoded bytes.
            using var data = SKData.Create((int)length);
            var span = NativeSpan(data);
            var total = 0;
            try
            {
                int read;
                while (total < span.Length && (read = RandomAccess.Read(handle, span[total..], total)) > 0)
                {
                    total += read;
                }
            }
            catch (IOException e)
            {
                return ImageDecodeResult.Skip(ImageSkipReason.Unreadable, $"reading failed: {e.Message}");
            }

            if (total < span.Length)
            {
                // It shrank since it was measured; what is there is decoded, and judged as truncated if it is.
                using var shorter = SKData.CreateCopy(span[..total]);
                return DecodeData(shorter, preprocessing, destination);
            }

            return DecodeData(data, preprocessing, destination);
        }
    }

    /// <summary>Decodes encoded image bytes (an upload, an archive member) into <paramref name="destination"/>.</summary>
    public ImageDecodeResult Decode(ReadOnlySpan<byte> encoded, Preprocessing preprocessing, Span<float> destination)
    {
        Validate(preprocessing, destination);
        if (encoded.IsEmpty)
        {
            return ImageDecodeResult.Skip(ImageSkipReason.Empty, "no bytes");
        }

        if (encoded.Length > Options.MaxFileBytes)
        {
            return ImageDecodeResult.Skip(ImageSkipReason.TooLarge, $"{encoded.Length:N0} bytes; the limit is {Options.MaxFileBytes:N0}");
        }

        using var data = SKData.CreateCopy(encoded);
        return DecodeData(data, preprocessing, destination);
    }

    /// <summary>Decodes the rest of <paramref name="stream"/>; stops reading once it exceeds <see cref="ImageDecoderOptions.MaxFileBytes"/>.</summary>
    public ImageDecodeResult Decode(Stream stream, Preprocessing preprocessing, Span<float> destination)
    {
        ArgumentNullException.ThrowIfNull(stream);
        Validate(preprocessing, destination);
        using var buffer = new MemoryStream();
        var chunk = new byte[81920];
        int read;
        while ((read = stream.Read(chunk)) > 0)
        {
            if (buffer.Length + read > Options.MaxFileBytes)
            {
                return ImageDecodeResult.Skip(ImageSkipReason.TooLarge, $"more than {Options.MaxFileBytes:N0} bytes");
            }

            buffer.Write(chunk, 0, read);
        }

        return Decode(buffer.GetBuffer().AsSpan(0, (int)buffer.Length), preprocessing, destination);
    }

    /// <summary>Opens <paramref name="path"/> for reading, or says why it cannot be.</summary>
    private bool TryOpen(string path, out SafeFileHandle handle, out long length, out ImageDecodeResult failure)
    {
        handle = null!;
        length = 0;
        failure = default;
        string real;
        try
        {
            var full = _root is null ? Path.GetFullPath(path) : Path.GetFullPath(path, _root);

            // Opened by its real path: the file checked is the file read, and a symlink to a FIFO is seen as one.
            real = RealPaths.Resolve(full, path);
        }
        catch (StoragePathException e)
        {
            return Fail(out failure, ImageSkipReason.Unreadable, e.Reason);
        }
        catch (Exception e) when (e is ArgumentException or IOException)
        {
            return Fail(out failure, ImageSkipReason.Unreadable, $"the path is not usable: {e.Message}");
        }

        if (_root is not null && !RealPaths.IsInside(_root, real))
        {
            return Fail(out failure, ImageSkipReason.OutsideRoot, $"it leads to '{real}', outside the dataset root '{_root}'");
        }

        if (Directory.Exists(real))
        {
            return Fail(out failure, ImageSkipReason.Unreadable, "a folder, not a file");
        }

        var info = new FileInfo(real);
        if (!info.Exists)
        {
            return Fail(out failure, ImageSkipReason.Missing, "no such file");
        }

        // Before opening: a FIFO or device reports no size, and opening a FIFO blocks until someone writes to it.
        if (info.Length == 0)
        {
            return Fail(out failure, ImageSkipReason.Empty, "the file is empty (0 bytes) or not a regular file");
        }

        try
        {
            handle = File.OpenHandle(real, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.SequentialScan);
            length = RandomAccess.GetLength(handle);
            return true;
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            return Fail(out failure, ImageSkipReason.Missing, "the file disappeared before it could be opened");
        }
        catch (UnauthorizedAccessException e)
        {
            return Fail(out failure, ImageSkipReason.Unreadable, $"permission denied: {e.Message}");
        }
        catch (IOException e)
        {
            return Fail(out failure, ImageSkipReason.Unreadable, e.Message);
        }
    }

    private static bool Fail(out ImageDecodeResult failure, ImageSkipReason reason, string message)
    {
        failure = ImageDecodeResult.Skip(reason, message);
        return false;
    }

    private ImageDecodeResult DecodeData(SKData data, Preprocessing preprocessing, Span<float> destination)
    {
        // The codec owns the stream and disposes it with itself.
        using var codec = SKCodec.Create(new SKMemoryStream(data), out var created);
        if (codec is null)
        {
            return created switch
            {
                SKCodecResult.IncompleteInput => ImageDecodeResult.Skip(ImageSkipReason.Truncated, "the file ends inside the image header (truncated)"),
                _ when UnsupportedFormat(NativeSpan(data)) is { } format =>
                    ImageDecodeResult.Skip(ImageSkipReason.UnsupportedFormat, $"a {format} image, which is not decoded here (JPEG, PNG, BMP, GIF, WebP are)"),
                SKCodecResult.Unimplemented => ImageDecodeResult.Skip(ImageSkipReason.NotAnImage, "the content is not an image format this decoder knows"),
                _ => ImageDecodeResult.Skip(ImageSkipReason.Corrupt, $"the image header is invalid ({created})"),
            };
        }

        var (width, height) = (codec.Info.Width, codec.Info.Height);

        // WBMP's header is a few zero bytes and two numbers, so stray binary files can pass for one; no dataset
        // holds real ones.
        if (codec.EncodedFormat == SKEncodedImageFormat.Wbmp)
        {
            return ImageDecodeResult.Skip(ImageSkipReason.UnsupportedFormat, "a WBMP image (or binary data that looks like one), which is not decoded here", width, height);
        }

        if (width <= 0 || height <= 0)
        {
            return ImageDecodeResult.Skip(ImageSkipReason.Corrupt, $"the header gives {width}x{height} pixels", width, height);
        }

        // From the header, before a byte of pixels is allocated or decoded.
        var pixels = (long)width * height;
        if (pixels > Options.MaxPixels || pixels * 4 > Array.MaxLength)
        {
            return ImageDecodeResult.Skip(
                ImageSkipReason.TooLarge,
                $"the header claims {width}x{height} = {pixels:N0} pixels; the limit is {Options.MaxPixels:N0} (a decompression bomb?)",
                width,
                height);
        }

        var geometry = Geometry.Of(width, height, preprocessing);
        if ((long)geometry.ResizedWidth * geometry.ResizedHeight > Options.MaxPixels)
        {
            // A 1x100000 strip passes the header check, yet resizing its shorter side to 256 would need 25.6 gigapixels.
            return ImageDecodeResult.Skip(
                ImageSkipReason.TooLarge,
                $"{width}x{height} resized to a shorter side of {preprocessing.ResizeTo} would be {geometry.ResizedWidth}x{geometry.ResizedHeight} pixels; the limit is {Options.MaxPixels:N0}",
                width,
                height);
        }

        var decodedSize = ScaledDecodeSize(codec, width, height, geometry.ShortSideNeeded);
        var decodedInfo = new SKImageInfo(decodedSize.Width, decodedSize.Height, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        var decoded = Scratch(ref _decoded, decodedInfo.BytesSize64);
        SKCodecResult result;
        unsafe
        {
            fixed (byte* pointer = decoded)
            {
                result = codec.GetPixels(decodedInfo, (IntPtr)pointer);
            }
        }

        switch (result)
        {
            case SKCodecResult.Success:
                break;
            case SKCodecResult.IncompleteInput:
                return ImageDecodeResult.Skip(ImageSkipReason.Truncated, $"the {Describe(codec)} stops before its end (truncated)", width, height);
            case SKCodecResult.ErrorInInput:
            case SKCodecResult.InvalidInput:
                return ImageDecodeResult.Skip(ImageSkipReason.Corrupt, $"the {Describe(codec)} has invalid data ({result})", width, height);
            default:
                return ImageDecodeResult.Skip(ImageSkipReason.Corrupt, $"the {Describe(codec)} could not be decoded ({result})", width, height);
        }

        var (source, stride, left, top) = (decoded, decodedSize.Width, geometry.CropLeft, geometry.CropTop);
        if (decodedSize.Width != geometry.ResizedWidth || decodedSize.Height != geometry.ResizedHeight)
        {
            var size = preprocessing.InputSize;
            source = Scratch(ref _cropped, (long)size * size * 4);
            _resampler.ResizeCrop(decoded, decodedSize.Width, decodedSize.Height, geometry.ResizedWidth, geometry.ResizedHeight, left, top, size, source);
            (stride, left, top) = (size, 0, 0);
        }

        Normalise(source, stride, left, top, preprocessing, destination);
        return ImageDecodeResult.Ok(width, height, decodedSize.Width, decodedSize.Height);
    }

    /// <summary>
    /// The size to decode at: the original, or for a JPEG at least twice the needed size, the smallest of 1/2,
    /// 1/4, 1/8 whose shorter side still reaches <paramref name="shortSideNeeded"/>, so resizing only ever
    /// shrinks.
    /// </summary>
    private static SKSizeI ScaledDecodeSize(SKCodec codec, int width, int height, int shortSideNeeded)
    {
        var best = new SKSizeI(width, height);
        if (codec.EncodedFormat != SKEncodedImageFormat.Jpeg)
        {
            return best;
        }

        foreach (var scale in (ReadOnlySpan<float>)[0.5f, 0.25f, 0.125f])
        {
            var size = codec.GetScaledDimensions(scale);
            if (Math.Min(size.Width, size.Height) < shortSideNeeded)
            {
                break;
            }

            best = size;
        }

        return best;
    }

    /// <summary>
    /// Crop of the resized image, read as RGBA bytes, into C×H×W floats: channels in the preprocessing's order,
    /// value × scale, then (v − mean) / std per channel or minus the mean image. One pass, one table look-up per
    /// value: the table holds what each byte value becomes in each channel.
    /// </summary>
    private static void Normalise(ReadOnlySpan<byte> rgba, int stride, int left, int top, Preprocessing p, Span<float> destination)
    {
        var size = p.InputSize;
        var plane = size * size;
        Span<float> table = stackalloc float[Channels * 256];
        for (var c = 0; c < Channels; c++)
        {
            for (var v = 0; v < 256; v++)
            {
                // The same operations, in the same order, as torchvision's ToTensor then Normalize.
                var scaled = v * p.Scale;
                table[(c * 256) + v] = p.MeanImage is null ? (scaled - p.Mean[c]) / p.Std[c] : scaled;
            }
        }

        // Output channel c reads byte offset c of RGBA for RGB order, 2 - c for BGR.
        var (from0, from2) = p.Order == ColorOrder.Rgb ? (0, 2) : (2, 0);
        ReadOnlySpan<float> table0 = table[..256];
        ReadOnlySpan<float> table1 = table.Slice(256, 256);
        ReadOnlySpan<float> table2 = table.Slice(512, 256);
        for (var y = 0; y < size; y++)
        {
            var row = rgba.Slice((((top + y) * stride) + left) * 4, size * 4);
            var out0 = destination.Slice(y * size, size);
            var out1 = destination.Slice(plane + (y * size), size);
            var out2 = destination.Slice((2 * plane) + (y * size), size);
            for (var x = 0; x < size; x++)
            {
                var i = x * 4;
                out0[x] = table0[row[i + from0]];
                out1[x] = table1[row[i + 1]];
                out2[x] = table2[row[i + from2]];
            }

            if (p.MeanImage is { } mean)
            {
                Subtract(out0, mean.AsSpan(y * size, size));
                Subtract(out1, mean.AsSpan(plane + (y * size), size));
                Subtract(out2, mean.AsSpan((2 * plane) + (y * size), size));
            }
        }
    }

    private static void Subtract(Span<float> values, ReadOnlySpan<float> mean)
    {
        for (var i = 0; i < values.Length; i++)
        {
            values[i] -= mean[i];
        }
    }

    private static void Validate(Preprocessing p, Span<float> destination)
    {
        ArgumentNullException.ThrowIfNull(p);
        if (p.InputSize <= 0 || p.ResizeTo < p.InputSize)
        {
            throw new ArgumentException($"Preprocessing '{p.Name}': InputSize {p.InputSize} must be positive and ResizeTo {p.ResizeTo} at least as large.", nameof(p));
        }

        if (p.MeanImage is { } meanImage)
        {
            if (meanImage.Length != ImageLength(p))
            {
                throw new ArgumentException($"Preprocessing '{p.Name}': the mean image has {meanImage.Length} values, not 3x{p.InputSize}x{p.InputSize}.", nameof(p));
            }
        }
        else if (p.Mean.Length != Channels || p.Std.Length != Channels || Array.IndexOf(p.Std, 0f) >= 0)
        {
            throw new ArgumentException($"Preprocessing '{p.Name}': mean and std need three values each, std none zero.", nameof(p));
        }

        if (destination.Length != ImageLength(p))
        {
            throw new ArgumentException($"The destination holds {destination.Length} floats; one {p.InputSize}x{p.InputSize} image needs {ImageLength(p)}.", nameof(destination));
        }
    }

    private static byte[] Scratch(ref byte[]? kept, long bytes)
    {
        if (kept is not null && kept.Length >= bytes)
        {
            return kept;
        }

        var fresh = GC.AllocateUninitializedArray<byte>(checked((int)bytes));
        if (bytes <= RetainedScratchBytes)
        {
            kept = fresh;
        }

        return fresh;
    }

    private static unsafe Span<byte> NativeSpan(SKData data) => new((void*)data.Data, checked((int)data.Size));

    private static string Describe(SKCodec codec) => codec.EncodedFormat.ToString().ToUpperInvariant();

    /// <summary>The name of an image format SkiaSharp does not decode, recognised by its signature; else null.</summary>
    private static string? UnsupportedFormat(ReadOnlySpan<byte> bytes)
    {
        if (bytes.StartsWith("II*\0"u8) || bytes.StartsWith("MM\0*"u8))
        {
            return "TIFF";
        }

        if (bytes.StartsWith("8BPS"u8))
        {
            return "Photoshop (PSD)";
        }

        if (bytes.Length >= 12 && bytes.Slice(4, 4).SequenceEqual("ftyp"u8))
        {
            return "HEIF/AVIF";
        }

        if (bytes.StartsWith((ReadOnlySpan<byte>)[0xFF, 0x0A]) || bytes.StartsWith("\0\0\0\x0CJXL "u8))
        {
            return "JPEG XL";
        }

        if (bytes.StartsWith("\0\0\0\x0CjP  "u8) || bytes.StartsWith((ReadOnlySpan<byte>)[0xFF, 0x4F, 0xFF, 0x51]))
        {
            return "JPEG 2000";
        }

        if (bytes.Length >= 3 && bytes[0] == (byte)'P' && bytes[1] is >= (byte)'1' and <= (byte)'7' && bytes[2] is (byte)'\n' or (byte)' ' or (byte)'\r' or (byte)'\t')
        {
            return "PNM (PBM/PGM/PPM)";
        }

        return null;
    }

    /// <summary>
    /// Where the crop comes from, with torchvision's arithmetic: the shorter side becomes ResizeTo and the
    /// longer side int(ResizeTo × long / short); the crop starts at round((resized − InputSize) / 2), halves to
    /// even as Python rounds. ResizeTo == InputSize means a plain resize to a square.
    /// </summary>
    private readonly record struct Geometry(int ResizedWidth, int ResizedHeight, int CropLeft, int CropTop, int ShortSideNeeded)
    {
        public static Geometry Of(int width, int height, Preprocessing p)
        {
            if (p.ResizeTo == p.InputSize)
            {
                return new Geometry(p.InputSize, p.InputSize, 0, 0, p.InputSize);
            }

            // Saturated, not wrapped: an absurd aspect ratio must still compare as too large.
            var (resizedWidth, resizedHeight) = width <= height
                ? (p.ResizeTo, (int)Math.Min((long)p.ResizeTo * height / width, int.MaxValue))
                : ((int)Math.Min((long)p.ResizeTo * width / height, int.MaxValue), p.ResizeTo);
            var left = (int)Math.Round((resizedWidth - p.InputSize) / 2.0, MidpointRounding.ToEven);
            var top = (int)Math.Round((resizedHeight - p.InputSize) / 2.0, MidpointRounding.ToEven);
            return new Geometry(resizedWidth, resizedHeight, left, top, p.ResizeTo);
        }
    }
}
