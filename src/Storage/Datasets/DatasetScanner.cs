using System.Buffers;
using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using Cluster.Storage.Files;

namespace Cluster.Storage.Datasets;

/// <summary>How a scan runs.</summary>
/// <param name="Parallelism">Files hashed at once; default: one per core.</param>
public sealed record DatasetScanOptions(int Parallelism = 0)
{
    internal int EffectiveParallelism => Parallelism > 0 ? Parallelism : Environment.ProcessorCount;
}

/// <summary>
/// Turns a folder of images into a <see cref="DatasetManifest"/>: either an ImageFolder layout (one subfolder per
/// class, as torchvision's ImageFolder and Keras' image_dataset_from_directory read) or a user manifest of
/// <c>path&lt;TAB&gt;label</c> lines. Each image's size and SHA-256 are computed in parallel. What cannot be
/// used is listed in <see cref="DatasetManifest.Skipped"/> with its reason; nothing disappears silently.
/// </summary>
/// <remarks>
/// Symlinks are followed only while they stay inside the root: one that leads out is skipped as
/// <see cref="ImageSkipReason.OutsideRoot"/> (a class folder that is such a link is skipped whole), so a dataset
/// can never pull in files its owner did not put under it. A folder reached twice through links inside the root
/// is scanned once. Files whose extension is not an image type the pipeline decodes are skipped by extension,
/// as the Python loaders do; a user manifest's entries are taken as images whatever their names, and the decoder
/// judges their content.
/// </remarks>
public static class DatasetScanner
{
    /// <summary>Extensions the image pipeline decodes (SkiaSharp), compared case-insensitively.</summary>
    public static readonly IReadOnlySet<string> ImageExtensions =
        new HashSet<string>([".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"], StringComparer.OrdinalIgnoreCase);

    // Image types people keep in datasets that SkiaSharp does not decode: named as such rather than "not an image".
    private static readonly IReadOnlySet<string> s_unsupportedImageExtensions = new HashSet<string>(
        [".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".psd", ".ppm", ".pgm", ".pbm", ".pnm", ".svg", ".dng", ".cr2", ".nef", ".raw", ".jp2"],
        StringComparer.OrdinalIgnoreCase);

    /// <summary>Scans an ImageFolder layout: each subfolder of <paramref name="directory"/> is a class.</summary>
    /// <exception cref="DatasetInputException"><paramref name="directory"/> is not a folder.</exception>
    public static async Task<DatasetManifest> ScanFolderAsync(string directory, DatasetScanOptions? options, CancellationToken ct)
    {
        var root = RealRoot(directory);
        var candidates = new List<Candidate>();
        var skipped = new List<SkippedImage>();
        var visited = new HashSet<string>(StringComparer.Ordinal) { root };
        foreach (var entry in SortedEntries(root))
        {
            var name = Path.GetFileName(entry);
            if (!Directory.Exists(entry))
            {
                skipped.Add(new SkippedImage(name, ImageSkipReason.Unlabelled, "a file beside the class folders belongs to no class"));
                continue;
            }

            if (name.Any(char.IsControl))
            {
                skipped.Add(new SkippedImage(name, ImageSkipReason.InvalidName, "the class folder's name has a control character"));
                continue;
            }

            var before = candidates.Count;
            if (WalkClassFolder(root, entry, name, candidates, skipped, visited) && candidates.Count == before)
            {
                skipped.Add(new SkippedImage(name, ImageSkipReason.Unlabelled, "the class folder holds no images, so the class is left out"));
            }
        }

        return await HashAsync(root, candidates, skipped, options ?? new DatasetScanOptions(), ct);
    }

    /// <summary>
    /// Scans the images a user manifest lists: UTF-8 lines <c>path&lt;TAB&gt;label</c>, paths relative to
    /// <paramref name="root"/> (default: the manifest's folder) or absolute inside it; blank lines and lines
    /// starting with '#' are ignored, and so is a first line <c>path&lt;TAB&gt;label</c>.
    /// </summary>
    /// <exception cref="DatasetInputException">The manifest is missing or has a line that is not two fields.</exception>
    public static async Task<DatasetManifest> ScanManifestAsync(
        string manifestFile,
        string? root,
        DatasetScanOptions? options,
        CancellationToken ct)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(manifestFile);
        if (!File.Exists(manifestFile))
        {
            throw new DatasetInputException($"Manifest '{manifestFile}' does not exist or is not a file.");
        }

        var realRoot = RealRoot(root ?? Path.GetDirectoryName(Path.GetFullPath(manifestFile))!);
        var candidates = new List<Candidate>();
        var skipped = new List<SkippedImage>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var lineNumber = 0;
        using var reader = new StreamReader(manifestFile, new UTF8Encoding(false, throwOnInvalidBytes: true));
        while (await ReadLineAsync(reader, manifestFile, lineNumber + 1, ct) is { } line)
        {
            lineNumber++;
            if (line.Length == 0 || line.StartsWith('#') || (lineNumber == 1 && line.Equals("path\tlabel", StringComparison.OrdinalIgnoreCase)))
            {
                continue;
            }

            var fields = line.Split('\t');
            if (fields.Length != 2)
            {
                throw new DatasetInputException(
                    $"{manifestFile}:{lineNumber}: expected 'path<TAB>label', found {fields.Length} tab-separated field(s).");
            }

            var (listed, label) = (fields[0], fields[1]);
            if (label.Length == 0)
            {
                skipped.Add(new SkippedImage(listed, ImageSkipReason.Unlabelled, $"line {lineNumber} gives no label"));
                continue;
            }

            if (listed.Any(char.IsControl) || label.Any(char.IsControl))
            {
                skipped.Add(new SkippedImage(listed, ImageSkipReason.InvalidName, $"line {lineNumber}: the path or label has a control character"));
                continue;
            }

            // The path is judged as written and where its links really lead: both must stay inside the root.
            var full = Path.GetFullPath(listed, realRoot);
            if (!RealPaths.IsInside(realRoot, full))
            {
                skipped.Add(new SkippedImage(listed, ImageSkipReason.OutsideRoot, $"line {lineNumber}: the path is outside the dataset root '{realRoot}'"));
                continue;
            }

            var relative = ToRelative(realRoot, full);
            if (!seen.Add(relative))
            {
                skipped.Add(new SkippedImage(relative, ImageSkipReason.Duplicate, $"line {lineNumber} lists it again; the first line is kept"));
                continue;
            }

            if (Classify(realRoot, full, relative) is { } refused)
            {
                skipped.Add(refused);
                continue;
            }

            candidates.Add(new Candidate(relative, label, full));
        }

        return await HashAsync(realRoot, candidates, skipped, options ?? new DatasetScanOptions(), ct);
    }

    private static async Task<string?> ReadLineAsync(StreamReader reader, string file, int lineNumber, CancellationToken ct)
    {
        try
        {
            return await reader.ReadLineAsync(ct);
        }
        catch (DecoderFallbackException e)
        {
            throw new DatasetInputException($"{file}:{lineNumber}: not valid UTF-8.", e);
        }
    }

    private static string RealRoot(string directory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        if (!Directory.Exists(directory))
        {
            throw new DatasetInputException($"Dataset folder '{directory}' does not exist or is not a folder.");
        }

        var full = Path.GetFullPath(directory);
        try
        {
            return Path.TrimEndingDirectorySeparator(RealPaths.Resolve(full, directory));
        }
        catch (StoragePathException e)
        {
            throw new DatasetInputException($"Dataset folder '{directory}' cannot be resolved: {e.Reason}.", e);
        }
    }

    private static IEnumerable<string> SortedEntries(string directory)
    {
        var entries = Directory.GetFileSystemEntries(directory);
        Array.Sort(entries, StringComparer.Ordinal);
        return entries;
    }

    /// <summary>
    /// Depth-first over one class folder, files in ordinal order (the order only matters for messages). False when
    /// the class folder itself was refused (and recorded as skipped).
    /// </summary>
    private static bool WalkClassFolder(
        string root,
        string classFolder,
        string label,
        List<Candidate> candidates,
        List<SkippedImage> skipped,
        HashSet<string> visited)
    {
        var pending = new Stack<string>();
        pending.Push(classFolder);
        var entered = false;
        while (pending.TryPop(out var folder))
        {
            var relativeFolder = ToRelative(root, folder);
            string real;
            try
            {
                real = RealPaths.Resolve(folder, folder);
            }
            catch (StoragePathException e)
            {
                skipped.Add(new SkippedImage(relativeFolder, ImageSkipReason.Unreadable, e.Reason));
                continue;
            }

            if (!RealPaths.IsInside(root, real))
            {
                skipped.Add(new SkippedImage(relativeFolder, ImageSkipReason.OutsideRoot, $"the folder is a symlink to '{real}', outside the dataset root"));
                continue;
            }

            if (!visited.Add(real))
            {
                skipped.Add(new SkippedImage(relativeFolder, ImageSkipReason.Duplicate, $"the folder is a link to '{ToRelative(root, real)}', which is scanned already"));
                continue;
            }

            string[] entries;
            try
            {
                entries = Directory.GetFileSystemEntries(folder);
            }
            catch (Exception e) when (e is UnauthorizedAccessException or IOException)
            {
                skipped.Add(new SkippedImage(relativeFolder, ImageSkipReason.Unreadable, $"the folder cannot be listed: {e.Message}"));
                continue;
            }

            entered |= folder == classFolder;

            // Reverse ordinal onto the stack, so folders pop in ordinal order.
            Array.Sort(entries, (a, b) => string.CompareOrdinal(b, a));
            foreach (var entry in entries)
            {
                if (Directory.Exists(entry))
                {
                    pending.Push(entry);
                    continue;
                }

                var relative = ToRelative(root, entry);
                if (relative.Any(char.IsControl))
                {
                    skipped.Add(new SkippedImage(relative, ImageSkipReason.InvalidName, "the name has a control character, which a manifest line cannot hold"));
                    continue;
                }

                var extension = Path.GetExtension(entry);
                if (!ImageExtensions.Contains(extension))
                {
                    skipped.Add(s_unsupportedImageExtensions.Contains(extension)
                        ? new SkippedImage(relative, ImageSkipReason.UnsupportedFormat, $"'{extension}' images are not decoded here (supported: {string.Join(' ', ImageExtensions)})")
                        : new SkippedImage(relative, ImageSkipReason.NotAnImage, $"'{extension}' is not an image extension (supported: {string.Join(' ', ImageExtensions)})"));
                    continue;
                }

                if (Classify(root, entry, relative) is { } refused)
                {
                    skipped.Add(refused);
                    continue;
                }

                candidates.Add(new Candidate(relative, label, entry));
            }
        }

        return entered;
    }

    /// <summary>Why the file at <paramref name="full"/> cannot be an entry before its bytes are read, or null.</summary>
    private static SkippedImage? Classify(string root, string full, string relative)
    {
        string real;
        try
        {
            real = RealPaths.Resolve(full, relative);
        }
        catch (StoragePathException e)
        {
            return new SkippedImage(relative, ImageSkipReason.Unreadable, e.Reason);
        }

        if (!RealPaths.IsInside(root, real))
        {
            return new SkippedImage(relative, ImageSkipReason.OutsideRoot, $"a symlink to '{real}', outside the dataset root");
        }

        if (Directory.Exists(real))
        {
            return new SkippedImage(relative, ImageSkipReason.Unreadable, "a folder, not a file");
        }

        return File.Exists(real) ? null : new SkippedImage(relative, ImageSkipReason.Missing, "no such file (or a dangling symlink)");
    }

    private static async Task<DatasetManifest> HashAsync(
        string root,
        List<Candidate> candidates,
        List<SkippedImage> skipped,
        DatasetScanOptions options,
        CancellationToken ct)
    {
        var entries = new DatasetEntry?[candidates.Count];
        var refused = new ConcurrentBag<SkippedImage>();
        var parallel = new ParallelOptions { MaxDegreeOfParallelism = options.EffectiveParallelism, CancellationToken = ct };

        // Synchronous reads on pool threads: most images are tens of kilobytes, which async file I/O only slows.
        await Task.Run(() => Parallel.For(0, candidates.Count, parallel, i =>
        {
            var candidate = candidates[i];
            try
            {
                // Checked before opening: a FIFO or device has no size, and opening a FIFO blocks until someone
                // writes to it.
                if (new FileInfo(candidate.FullPath).Length == 0)
                {
                    refused.Add(new SkippedImage(candidate.Path, ImageSkipReason.Empty, "the file is empty (0 bytes) or not a regular file"));
                    return;
                }

                entries[i] = Hash(candidate, ct);
            }
            catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
            {
                refused.Add(new SkippedImage(candidate.Path, ImageSkipReason.Missing, "the file disappeared during the scan"));
            }
            catch (Exception e) when (e is UnauthorizedAccessException or IOException)
            {
                refused.Add(new SkippedImage(candidate.Path, ImageSkipReason.Unreadable, e.Message));
            }
        }), ct);

        skipped.AddRange(refused);
        return new DatasetManifest(entries.OfType<DatasetEntry>(), skipped, root);
    }

    private static string ToRelative(string root, string full)
    {
        var relative = Path.GetRelativePath(root, full);
        return Path.DirectorySeparatorChar == '/' ? relative : relative.Replace(Path.DirectorySeparatorChar, '/');
    }

    /// <summary>Size and SHA-256 from one read, so the size recorded is that of the very bytes hashed.</summary>
    private static DatasetEntry Hash(Candidate candidate, CancellationToken ct)
    {
        using var stream = new FileStream(candidate.FullPath, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0, FileOptions.SequentialScan);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = ArrayPool<byte>.Shared.Rent(1 << 16);
        try
        {
            long bytes = 0;
            int read;
            while ((read = stream.Read(buffer)) > 0)
            {
                ct.ThrowIfCancellationRequested();
                hash.AppendData(buffer, 0, read);
                bytes += read;
            }

            return new DatasetEntry(candidate.Path, candidate.Label, bytes, Convert.ToHexStringLower(hash.GetHashAndReset()));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private sealed record Candidate(string Path, string Label, string FullPath);
}
