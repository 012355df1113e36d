using System.Buffers.Binary;
using System.Globalization;
using System.IO.Compression;
using System.Runtime.InteropServices;
using Cluster.Storage.Datasets;
using SkiaSharp;

namespace Cluster.Coordinator.Datasets;

/// <summary>What the class folders of an imported IDX dataset are called.</summary>
public enum IdxClassNames
{
    /// <summary>The label number itself: 0, 1, ... (MNIST).</summary>
    Digits,

    /// <summary>The ten Fashion-MNIST names, by label: T-shirt_top, Trouser, ... Ankle_boot.</summary>
    FashionMnist,
}

/// <summary>How an IDX import runs.</summary>
/// <param name="Limit">Import only the first N images; null: all.</param>
/// <param name="Parallelism">Images encoded at once; 0: one per core.</param>
public sealed record IdxImportOptions(IdxClassNames Classes = IdxClassNames.Digits, int? Limit = null, int Parallelism = 0);

/// <summary>One class folder an import wrote.</summary>
public sealed record ImportedClass(int Label, string Name, int Images);

/// <summary>How far an import is: <see cref="Written"/> of <see cref="Total"/> images.</summary>
public readonly record struct IdxImportProgress(int Written, int Total);

/// <summary>What an import wrote.</summary>
public sealed record IdxImportResult(string OutputDirectory, int Images, int Rows, int Columns, IReadOnlyList<ImportedClass> Classes);

/// <summary>
/// Turns an IDX image file and its label file (the MNIST / Fashion-MNIST format, plain or gzip-compressed) into an
/// ImageFolder tree, <c>OUT_DIR/&lt;class&gt;/&lt;index&gt;.png</c>, that <see cref="DatasetScanner"/> and every Python
/// loader read. Pixels are written as stored (8-bit grayscale), the index is the image's position in the IDX file.
/// </summary>
/// <remarks>
/// Both files are checked before anything is written: magic numbers, dimensions, that the data is as long as the
/// header says, that the counts agree, and that each label has a class name. Any problem is a
/// <see cref="DatasetInputException"/> naming the file.
/// </remarks>
public static class IdxImporter
{
    /// <summary>Fashion-MNIST's class names by label ('/' in "T-shirt/top" is not allowed in a folder name).</summary>
    public static readonly IReadOnlyList<string> FashionMnistClasses =
        ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"];

    // IDX magic: two zero bytes, the element type (0x08: unsigned byte), the number of dimensions.
    private const int ImagesMagic = 0x00000803;
    private const int LabelsMagic = 0x00000801;

    // No real IDX image is larger; a header that claims more is broken or hostile, and is refused before allocating.
    private const int MaxSide = 4096;

    public static async Task<IdxImportResult> ImportAsync(
        string imagesFile,
        string labelsFile,
        string outputDirectory,
        IdxImportOptions? options,
        IProgress<IdxImportProgress>? progress,
        CancellationToken ct)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(outputDirectory);
        options ??= new IdxImportOptions();
        if (options.Limit is < 0)
        {
            throw new DatasetInputException($"--limit {options.Limit} is negative.");
        }

        var images = ReadImages(imagesFile, options.Limit);
        var labels = ReadLabels(labelsFile, options.Limit);
        if (images.Total != labels.Total)
        {
            throw new DatasetInputException($"'{imagesFile}' holds {images.Total} images but '{labelsFile}' holds {labels.Total} labels; they must be a matching pair.");
        }

        var names = ClassNames(labels, labelsFile, options.Classes);
        var output = PrepareOutput(outputDirectory);
        var digits = Math.Max(5, (images.Total - 1).ToString(CultureInfo.InvariantCulture).Length);
        var perClass = new int[256];
        foreach (var label in labels.Values)
        {
            perClass[label]++;
        }

        for (var label = 0; label < perClass.Length; label++)
        {
            if (perClass[label] > 0)
            {
                Directory.CreateDirectory(Path.Combine(output, names[label]!));
            }
        }

        var done = 0;
        var info = new SKImageInfo(images.Columns, images.Rows, SKColorType.Gray8, SKAlphaType.Opaque);
        var imageBytes = images.Rows * images.Columns;
        var pinned = GCHandle.Alloc(images.Pixels, GCHandleType.Pinned);
        try
        {
            var start = pinned.AddrOfPinnedObject();
            var parallel = new ParallelOptions
            {
                MaxDegreeOfParallelism = options.Parallelism > 0 ? options.Parallelism : Environment.ProcessorCount,
                CancellationToken = ct,
            };
            await Task.Run(
                () => Parallel.For(0, images.Count, parallel, index =>
                {
                    var name = index.ToString(CultureInfo.InvariantCulture).PadLeft(digits, '0') + ".png";
                    var path = Path.Combine(output, names[labels.Values[index]]!, name);
                    using var pixmap = new SKPixmap(info, start + (index * imageBytes), images.Columns);
                    WriteAtomically(path, stream => pixmap.Encode(stream, SKEncodedImageFormat.Png, 100));

                    // Every 256th image: often enough for a progress bar, rare enough to cost nothing.
                    var count = Interlocked.Increment(ref done);
                    if (count % 256 == 0)
                    {
                        progress?.Report(new IdxImportProgress(count, images.Count));
                    }
                }),
                ct);
        }
        finally
        {
            pinned.Free();
        }

        progress?.Report(new IdxImportProgress(images.Count, images.Count));
        var classes = Enumerable.Range(0, perClass.Length)
            .Where(label => perClass[label] > 0)
            .Select(label => new ImportedClass(label, names[label]!, perClass[label]))
            .ToList();
        return new IdxImportResult(output, images.Count, images.Rows, images.Columns, classes);
    }

    /// <summary>The images of an IDX file (magic 0x00000803): the first <paramref name="limit"/> of them, or all.</summary>
    public static IdxImages ReadImages(string path, int? limit)
    {
        using var stream = Open(path);
        var header = ReadHeader(stream, path, ImagesMagic, "image", "unsigned bytes in 3 dimensions: count, rows, columns");
        var (total, rows, columns) = (header[0], header[1], header[2]);
        if (rows is < 1 or > MaxSide || columns is < 1 or > MaxSide)
        {
            throw new DatasetInputException($"'{path}' claims images of {rows}x{columns} pixels; expected 1 to {MaxSide} on a side.");
        }

        var count = Math.Min(total, limit ?? total);
        var length = (long)count * rows * columns;
        if (length > Array.MaxLength)
        {
            throw new DatasetInputException($"'{path}' holds {total} images of {rows}x{columns}: {length:N0} bytes, more than one import can hold; import part of it with --limit.");
        }

        var pixels = ReadBody(stream, path, (int)length, count == total, $"{total} images of {rows}x{columns}");
        return new IdxImages(total, count, rows, columns, pixels);
    }

    /// <summary>The labels of an IDX file (magic 0x00000801): the first <paramref name="limit"/> of them, or all.</summary>
    public static IdxLabels ReadLabels(string path, int? limit)
    {
        using var stream = Open(path);
        var total = ReadHeader(stream, path, LabelsMagic, "label", "unsigned bytes in 1 dimension")[0];
        var count = Math.Min(total, limit ?? total);
        return new IdxLabels(total, ReadBody(stream, path, count, count == total, $"{total} labels"));
    }

    private static Stream Open(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        if (!File.Exists(path))
        {
            throw new DatasetInputException($"IDX file '{path}' does not exist or is not a file.");
        }

        var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1 << 16, FileOptions.SequentialScan);

        // Recognised by content, not by name: gzip starts with 1F 8B.
        Span<byte> signature = stackalloc byte[2];
        var gzip = file.Read(signature) == 2 && signature[0] == 0x1F && signature[1] == 0x8B;
        file.Position = 0;
        return gzip ? new GZipStream(file, CompressionMode.Decompress) : file;
    }

    private static int[] ReadHeader(Stream stream, string path, int magic, string kind, string layout)
    {
        var dimensions = magic & 0xFF;
        Span<byte> header = stackalloc byte[4 * (1 + dimensions)];
        var read = ReadFully(stream, path, header);
        if (read < 4)
        {
            throw new DatasetInputException($"'{path}' is not an IDX {kind} file: it is only {read} bytes long.");
        }

        var found = BinaryPrimitives.ReadInt32BigEndian(header);
        if (found != magic)
        {
            throw new DatasetInputException(
                $"'{path}' is not an IDX {kind} file: its magic number is 0x{found:X8}, expected 0x{magic:X8} ({layout}).");
        }

        if (read < header.Length)
        {
            throw new DatasetInputException($"'{path}' ends inside its IDX header ({read} of {header.Length} bytes).");
        }

        var sizes = new int[dimensions];
        for (var i = 0; i < dimensions; i++)
        {
            sizes[i] = BinaryPrimitives.ReadInt32BigEndian(header[(4 * (i + 1))..]);
            if (sizes[i] < 0)
            {
                throw new DatasetInputException($"'{path}' has a negative size ({sizes[i]}) in its IDX header.");
            }
        }

        return sizes;
    }

    /// <summary>The next <paramref name="length"/> bytes; when they are the whole body, also checks nothing follows.</summary>
    private static byte[] ReadBody(Stream stream, string path, int length, bool whole, string announced)
    {
        var body = GC.AllocateUninitializedArray<byte>(length);
        var read = ReadFully(stream, path, body);
        if (read < length)
        {
            throw new DatasetInputException($"'{path}' is truncated: its header announces {announced}, but the data ends after {read:N0} of the {length:N0} bytes needed.");
        }

        if (whole && ReadFully(stream, path, stackalloc byte[1]) != 0)
        {
            throw new DatasetInputException($"'{path}' has data after the {announced} its header announces; it is not a well-formed IDX file.");
        }

        return body;
    }

    private static int ReadFully(Stream stream, string path, Span<byte> buffer)
    {
        try
        {
            return stream.ReadAtLeast(buffer, buffer.Length, throwOnEndOfStream: false);
        }
        catch (InvalidDataException e)
        {
            throw new DatasetInputException($"'{path}' looks gzip-compressed but is not valid gzip: {e.Message}", e);
        }
    }

    private static string?[] ClassNames(IdxLabels labels, string labelsFile, IdxClassNames classes)
    {
        var names = new string?[256];
        for (var label = 0; label < names.Length; label++)
        {
            names[label] = classes == IdxClassNames.Digits
                ? label.ToString(CultureInfo.InvariantCulture)
                : label < FashionMnistClasses.Count ? FashionMnistClasses[label] : null;
        }

        for (var i = 0; i < labels.Values.Length; i++)
        {
            if (names[labels.Values[i]] is null)
            {
                throw new DatasetInputException($"'{labelsFile}': label {labels.Values[i]} of image {i} is not one of the {FashionMnistClasses.Count} Fashion-MNIST classes.");
            }
        }

        return names;
    }

    /// <summary>
    /// The output folder, created if missing. One that already has content is refused: class folders from an
    /// earlier import with other names or another --limit would silently mix into this one.
    /// </summary>
    private static string PrepareOutput(string outputDirectory)
    {
        var output = Path.GetFullPath(outputDirectory);
        if (File.Exists(output))
        {
            throw new DatasetInputException($"Output folder '{outputDirectory}' is a file.");
        }

        if (Directory.Exists(output) && Directory.EnumerateFileSystemEntries(output).Any())
        {
            throw new DatasetInputException($"Output folder '{outputDirectory}' is not empty; give a new or empty folder.");
        }

        Directory.CreateDirectory(output);
        return output;
    }

    /// <summary>Written under a temporary name, then renamed: an interrupted import leaves no half-written PNG.</summary>
    private static void WriteAtomically(string path, Func<Stream, bool> write)
    {
        var temporary = Path.Join(Path.GetDirectoryName(path), "." + Path.GetFileName(path) + ".tmp");
        using (var stream = new FileStream(temporary, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            if (!write(stream))
            {
                throw new InvalidOperationException($"Encoding {path} as PNG failed.");
            }
        }

        File.Move(temporary, path, overwrite: true);
    }
}

/// <summary>Images read from an IDX file: <see cref="Count"/> of its <see cref="Total"/>, row-major bytes, one after another.</summary>
public sealed record IdxImages(int Total, int Count, int Rows, int Columns, byte[] Pixels);

/// <summary>Labels read from an IDX file: the first <c>Values.Length</c> of its <see cref="Total"/>.</summary>
public sealed record IdxLabels(int Total, byte[] Values);
