namespace Cluster.Storage.Datasets;

/// <summary>
/// Why an image was left out of a dataset scan or a decoded batch. One vocabulary for the scanner (which looks at
/// names, links and bytes) and the decoder (which looks at the content); its <see cref="ImageSkipReasons.Code"/>
/// strings are what skipped.tsv and the skipped_images table store, so they never change once released. The
/// numbers are fixed for the same reason.
/// </summary>
public enum ImageSkipReason
{
    /// <summary>Zero bytes, or not a regular file (a FIFO or device reports no size, and opening it could block).</summary>
    Empty = 1,

    /// <summary>The data ends before the image does (an interrupted copy or download).</summary>
    Truncated = 2,

    /// <summary>The content (or, at scan time, the extension) is not an image.</summary>
    NotAnImage = 3,

    /// <summary>An image format the decoder does not read: TIFF, HEIF/AVIF, PSD, WBMP, ...</summary>
    UnsupportedFormat = 4,

    /// <summary>Too many pixels or bytes (a decompression bomb), refused from the header before decoding.</summary>
    TooLarge = 5,

    /// <summary>The decoder found invalid data inside an image whose header it accepted.</summary>
    Corrupt = 6,

    /// <summary>It could not be opened or read: permissions, an I/O error, a folder where a file was expected.</summary>
    Unreadable = 7,

    /// <summary>Listed, but not there (deleted since the scan, or a dangling symlink).</summary>
    Missing = 8,

    /// <summary>A symlink (or path) that leads outside the dataset root; never followed.</summary>
    OutsideRoot = 9,

    /// <summary>The path or label holds a tab, newline or other control character that a manifest line cannot hold.</summary>
    InvalidName = 10,

    /// <summary>The same file or folder reached a second time (listed twice, or a folder symlink inside the root).</summary>
    Duplicate = 11,

    /// <summary>No class: a file beside the class folders, a class folder with no images, or an empty label.</summary>
    Unlabelled = 12,
}

/// <summary>The stable text codes of <see cref="ImageSkipReason"/>.</summary>
public static class ImageSkipReasons
{
    public static string Code(this ImageSkipReason reason) => reason switch
    {
        ImageSkipReason.Empty => "empty",
        ImageSkipReason.Truncated => "truncated",
        ImageSkipReason.NotAnImage => "not-an-image",
        ImageSkipReason.UnsupportedFormat => "unsupported-format",
        ImageSkipReason.TooLarge => "too-large",
        ImageSkipReason.Corrupt => "corrupt",
        ImageSkipReason.Unreadable => "unreadable",
        ImageSkipReason.Missing => "missing",
        ImageSkipReason.OutsideRoot => "outside-root",
        ImageSkipReason.InvalidName => "invalid-name",
        ImageSkipReason.Duplicate => "duplicate",
        ImageSkipReason.Unlabelled => "unlabelled",
        _ => throw new ArgumentOutOfRangeException(nameof(reason), reason, null),
    };

    /// <summary>The reason whose <see cref="Code"/> is <paramref name="code"/>.</summary>
    public static bool TryParse(string code, out ImageSkipReason reason)
    {
        foreach (var candidate in Enum.GetValues<ImageSkipReason>())
        {
            if (candidate.Code() == code)
            {
                reason = candidate;
                return true;
            }
        }

        reason = default;
        return false;
    }
}

/// <summary>A file left out of a dataset or a batch, with the reason and a message for people.</summary>
/// <param name="Path">Relative to the dataset root with '/' separators where it is known to be inside it; else as given.</param>
public sealed record SkippedImage(string Path, ImageSkipReason Reason, string Message);
