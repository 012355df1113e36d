using System.Security.Cryptography;

namespace Cluster.Storage.Files;

/// <summary>
/// The shared-storage folder that workers and the coordinator exchange features, checkpoints, manifests and
/// reports through. Every path that arrives in a message is relative to <see cref="Root"/> and goes through
/// <see cref="Resolve"/>, which refuses anything that could reach outside it. Writes are atomic: readers see
/// the old file or the complete new one, never a partial one.
/// </summary>
/// <remarks>
/// The containment check guards against malformed or hostile paths in messages; it does not defend against a
/// process that swaps symlinks inside the root between the check and the use, which would need openat-style
/// APIs the BCL does not offer.
/// </remarks>
public sealed class FileStore
{
    private const string TempSuffix = ".tmp";

    public FileStore(string root)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(root);
        var full = Path.GetFullPath(root);
        Directory.CreateDirectory(full);

        // Resolved once, so every containment check compares real paths with a real root, even when the
        // configured root (or one of its parents, like macOS's /tmp) is itself a symlink.
        Root = Path.TrimEndingDirectorySeparator(RealPaths.Resolve(full, root));
    }

    /// <summary>The full, symlink-free path of the storage root.</summary>
    public string Root { get; }

    /// <summary>
    /// The full path for <paramref name="relativePath"/>, or a <see cref="StoragePathException"/> when the path
    /// is empty, absolute, has a '..' segment, a backslash or a control character, or passes through a
    /// symlink that lands outside the root.
    /// </summary>
    public string Resolve(string relativePath) => ResolveCore(relativePath, allowRoot: false);

    /// <summary>The path relative to <see cref="Root"/>, with forward slashes; "" for the root itself.</summary>
    public string ToRelative(string fullPath)
    {
        ArgumentNullException.ThrowIfNull(fullPath);
        if (fullPath.Length == 0 || fullPath.Any(char.IsControl))
        {
            throw new StoragePathException(fullPath, "it is empty or contains a control character");
        }

        var full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(fullPath));
        if (!IsInsideRoot(full))
        {
            throw new StoragePathException(fullPath, $"it is outside the storage root '{Root}'");
        }

        var relative = Path.GetRelativePath(Root, full);
        return relative == "." ? "" : relative.Replace(Path.DirectorySeparatorChar, '/');
    }

    /// <summary>Atomically replaces the file at <paramref name="relativePath"/> with <paramref name="bytes"/>.</summary>
    public Task WriteAllBytesAsync(string relativePath, ReadOnlyMemory<byte> bytes, CancellationToken ct) =>
        WriteAsync(relativePath, (stream, token) => stream.WriteAsync(bytes, token).AsTask(), ct);

    /// <summary>
    /// Atomically replaces the file at <paramref name="relativePath"/> with what <paramref name="writer"/>
    /// writes: the bytes go to a temporary file in the same folder, are flushed to disk, and only then renamed
    /// over the target. If the writer throws or is cancelled, the temporary file is removed and the target
    /// keeps its old content.
    /// </summary>
    public async Task WriteAsync(string relativePath, Func<Stream, CancellationToken, Task> writer, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(writer);
        var target = Resolve(relativePath);
        var directory = Path.GetDirectoryName(target)!;

        // Resolve has already checked every existing component, and the missing ones are plain names below
        // them, so creating them cannot step outside the root.
        Directory.CreateDirectory(directory);
        ct.ThrowIfCancellationRequested();

        // Same folder as the target, so the rename stays on one file system and is atomic; the leading dot
        // keeps it out of the way of anything listing the folder.
        var temp = Path.Join(
            directory,
            $".{Path.GetFileName(target)}.{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8))}{TempSuffix}");
        try
        {
            var options = new FileStreamOptions
            {
                Mode = FileMode.CreateNew,
                Access = FileAccess.Write,
                Share = FileShare.None,
                Options = FileOptions.Asynchronous,
            };
            await using (var stream = new FileStream(temp, options))
            {
                await writer(stream, ct);

                // A writer that ignores the token must not get a cancelled write published.
                ct.ThrowIfCancellationRequested();
                await stream.FlushAsync(ct);

                // Durable before visible: after a crash the target is either the old file or the whole new one.
                stream.Flush(flushToDisk: true);
            }

            File.Move(temp, target, overwrite: true);
        }
        catch
        {
            DeleteQuietly(temp);
            throw;
        }
    }

    /// <summary>
    /// Like <see cref="WriteAsync"/>, and returns the SHA-256 (lowercase hex) of the bytes written. The hash is
    /// computed while streaming, so the file is not read back. The writer's stream is forward-only.
    /// </summary>
    public async Task<string> WriteWithSha256Async(
        string relativePath,
        Func<Stream, CancellationToken, Task> writer,
        CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(writer);
        using var sha256 = SHA256.Create();
        await WriteAsync(
            relativePath,
            async (file, token) =>
            {
                // A hash transform passes bytes through unchanged while hashing them, so the digest is of
                // exactly the bytes that reach the file.
                await using var hashing = new CryptoStream(file, sha256, CryptoStreamMode.Write, leaveOpen: true);
                await writer(hashing, token);
                await hashing.FlushFinalBlockAsync(token);
            },
            ct);
        return Convert.ToHexStringLower(sha256.Hash!);
    }

    /// <summary>Opens the file at <paramref name="relativePath"/> for reading.</summary>
    public Stream OpenRead(string relativePath) =>
        new FileStream(
            Resolve(relativePath),
            FileMode.Open,
            FileAccess.Read,
            FileShare.Read,
            bufferSize: 81920,
            FileOptions.Asynchronous | FileOptions.SequentialScan);

    /// <summary>Whether a file or folder exists at <paramref name="relativePath"/>.</summary>
    public bool Exists(string relativePath) => Path.Exists(Resolve(relativePath));

    /// <summary>The SHA-256 (lowercase hex) of the file at <paramref name="relativePath"/>.</summary>
    public async Task<string> Sha256Async(string relativePath, CancellationToken ct)
    {
        await using var stream = OpenRead(relativePath);
        return Convert.ToHexStringLower(await SHA256.HashDataAsync(stream, ct));
    }

    /// <summary>
    /// The files and folders directly inside <paramref name="relativeDirectory"/> ("" for the root) whose
    /// names match <paramref name="pattern"/>, as root-relative paths with forward slashes, in ordinal order.
    /// A missing folder lists as empty; temporary files of writes in progress are left out.
    /// </summary>
    public IEnumerable<string> List(string relativeDirectory, string pattern = "*")
    {
        var directory = ResolveCore(relativeDirectory, allowRoot: true);
        if (!Directory.Exists(directory))
        {
            return [];
        }

        return Directory.EnumerateFileSystemEntries(directory, pattern)
            .Where(path => !IsTempFile(Path.GetFileName(path)))
            .Select(ToRelative)
            .Order(StringComparer.Ordinal)
            .ToList();
    }

    /// <summary>
    /// Deletes the file, or the folder and everything in it, at <paramref name="relativePath"/>. Deleting
    /// something already gone succeeds, so a redelivered message can repeat it.
    /// </summary>
    public void Delete(string relativePath)
    {
        var path = Resolve(relativePath);

        // A symlink is removed itself, never followed: Directory.Exists would look through it.
        if (Directory.Exists(path) && new FileInfo(path).LinkTarget is null)
        {
            Directory.Delete(path, recursive: true);
        }
        else if (Directory.Exists(Path.GetDirectoryName(path)))
        {
            // File.Delete tolerates a missing file but not a missing folder above it.
            File.Delete(path);
        }
    }

    /// <summary>Total size in bytes of the files under <paramref name="relativeDirectory"/> ("" for the root).</summary>
    public long UsageBytes(string relativeDirectory = "")
    {
        var directory = ResolveCore(relativeDirectory, allowRoot: true);
        if (!Directory.Exists(directory))
        {
            return 0;
        }

        // Symlinks are skipped rather than followed: what they point to is counted where it lives, or is not
        // ours to count.
        var options = new EnumerationOptions
        {
            RecurseSubdirectories = true,
            AttributesToSkip = FileAttributes.ReparsePoint,
            IgnoreInaccessible = true,
        };
        return new DirectoryInfo(directory).EnumerateFiles("*", options).Sum(file => file.Length);
    }

    // Called while another exception is on its way out; that one explains the failure, so a second one
    // from the clean-up must not replace it.
    private static void DeleteQuietly(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }

    private static bool IsTempFile(string name) =>
        name.StartsWith('.') && name.EndsWith(TempSuffix, StringComparison.Ordinal);

    private string ResolveCore(string relativePath, bool allowRoot)
    {
        ArgumentNullException.ThrowIfNull(relativePath);
        if (relativePath.Length == 0 && !allowRoot)
        {
            throw new StoragePathException(relativePath, "it is empty");
        }

        if (relativePath.Any(char.IsControl))
        {
            throw new StoragePathException(relativePath, "it contains a control character");
        }

        // Checked before the backslash rule so "C:\x" and "\\server\x" are reported for what they are.
        if (relativePath.StartsWith('/')
            || relativePath.StartsWith('\\')
            || (relativePath.Length >= 2 && char.IsAsciiLetter(relativePath[0]) && relativePath[1] == ':')
            || Path.IsPathRooted(relativePath))
        {
            throw new StoragePathException(relativePath, "it is absolute; storage paths are relative to the root");
        }

        // Messages use forward slashes everywhere; a backslash would mean a separator on Windows and a name
        // character on Linux, so it is refused rather than guessed at.
        if (relativePath.Contains('\\'))
        {
            throw new StoragePathException(relativePath, "it contains a backslash; use '/' as the separator");
        }

        var segments = relativePath.Split('/');

        // Any '..' is refused, even one that would stay inside: legitimate senders never need it.
        if (segments.Contains(".."))
        {
            throw new StoragePathException(relativePath, "it contains a '..' segment");
        }

        var names = segments.Where(segment => segment is not ("" or ".")).ToArray();
        if (names.Length == 0 && !allowRoot)
        {
            throw new StoragePathException(relativePath, "it names the storage root itself");
        }

        var full = names.Length == 0 ? Root : Path.Join(Root, string.Join(Path.DirectorySeparatorChar, names));
        if (!IsInsideRoot(RealPaths.Resolve(full, relativePath)))
        {
            throw new StoragePathException(relativePath, $"it passes through a symlink that leads outside the storage root '{Root}'");
        }

        return full;
    }

    private bool IsInsideRoot(string fullPath) => RealPaths.IsInside(Root, fullPath);
}
