namespace Cluster.Storage.Files;

/// <summary>
/// Where a path really lands once its symlinks are followed, and whether that is inside a root. The file store,
/// the dataset scanner and the image decoder share it: each refuses symlinks that lead out of its root.
/// </summary>
public static class RealPaths
{
    // The same limit Linux applies (MAXSYMLINKS), so a link loop is refused instead of followed forever.
    private const int MaxSymlinkHops = 40;

    /// <summary>
    /// Where <paramref name="fullPath"/> really lands: each existing component that is a symlink is replaced by
    /// its target, as the kernel would, so a link through another link or through '..' is judged by its true
    /// destination. Components that do not exist yet are kept as written. A link loop throws a
    /// <see cref="StoragePathException"/> naming <paramref name="reportedPath"/>.
    /// </summary>
    public static string Resolve(string fullPath, string reportedPath)
    {
        // Pending components, next one on top; a symlink's target is pushed in place of the link.
        var pending = new Stack<string>();
        PushComponents(pending, fullPath);
        var current = Path.GetPathRoot(fullPath)!;
        var hops = 0;
        while (pending.TryPop(out var name))
        {
            if (name is "" or ".")
            {
                continue;
            }

            if (name == "..")
            {
                current = Path.GetDirectoryName(current) ?? current;
                continue;
            }

            var next = Path.Join(current, name);
            var target = new FileInfo(next).LinkTarget;
            if (target is null)
            {
                current = next;
                continue;
            }

            if (++hops > MaxSymlinkHops)
            {
                throw new StoragePathException(reportedPath, "it passes through too many levels of symlinks");
            }

            if (Path.IsPathRooted(target))
            {
                current = Path.GetPathRoot(target)!;
            }

            PushComponents(pending, target);
        }

        return current;
    }

    /// <summary>
    /// Whether <paramref name="fullPath"/> is <paramref name="root"/> or below it. Both must already be real
    /// (see <see cref="Resolve"/>) and without a trailing separator; the comparison is ordinal.
    /// </summary>
    public static bool IsInside(string root, string fullPath) =>
        fullPath == root
        || fullPath.StartsWith(
            root.EndsWith(Path.DirectorySeparatorChar) ? root : root + Path.DirectorySeparatorChar,
            StringComparison.Ordinal);

    private static void PushComponents(Stack<string> pending, string path)
    {
        var components = path.Split(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar);
        for (var i = components.Length - 1; i >= 0; i--)
        {
            pending.Push(components[i]);
        }
    }
}
