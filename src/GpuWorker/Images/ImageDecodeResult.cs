using Cluster.Storage.Datasets;

namespace Cluster.GpuWorker.Images;

/// <summary>
/// What became of one image: decoded (<see cref="IsOk"/>, with the size it had in the file), or skipped with a
/// <see cref="ImageSkipReason"/> and a one-line message. Hostile or broken files end here, never in an exception.
/// </summary>
public readonly record struct ImageDecodeResult
{
    private ImageDecodeResult(ImageSkipReason? reason, string? message, int width, int height, int decodedWidth, int decodedHeight)
    {
        Reason = reason;
        Message = message;
        Width = width;
        Height = height;
        DecodedWidth = decodedWidth;
        DecodedHeight = decodedHeight;
    }

    public bool IsOk => Reason is null;

    /// <summary>Why the image was skipped; null when it was decoded.</summary>
    public ImageSkipReason? Reason { get; }

    /// <summary>For people: what was wrong, e.g. "the PNG stops before its end (truncated)".</summary>
    public string? Message { get; }

    /// <summary>Width in the file (before any scaling), when the header was read; else 0.</summary>
    public int Width { get; }

    /// <summary>Height in the file (before any scaling), when the header was read; else 0.</summary>
    public int Height { get; }

    /// <summary>Width the pixels were decoded at: less than <see cref="Width"/> when a JPEG was decoded scaled down.</summary>
    public int DecodedWidth { get; }

    /// <summary>Height the pixels were decoded at.</summary>
    public int DecodedHeight { get; }

    public static ImageDecodeResult Ok(int width, int height, int decodedWidth, int decodedHeight) =>
        new(null, null, width, height, decodedWidth, decodedHeight);

    public static ImageDecodeResult Skip(ImageSkipReason reason, string message, int width = 0, int height = 0) =>
        new(reason, message, width, height, 0, 0);

    /// <summary>This result as a skipped entry for <paramref name="path"/>; only for a skipped image.</summary>
    public SkippedImage ToSkipped(string path) =>
        Reason is { } reason
            ? new SkippedImage(path, reason, Message!)
            : throw new InvalidOperationException("The image was decoded, not skipped.");

    public override string ToString() => IsOk ? $"ok {Width}x{Height} (decoded at {DecodedWidth}x{DecodedHeight})" : $"{Reason!.Value.Code()}: {Message}";
}
