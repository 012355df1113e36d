namespace Cluster.Storage.Files;

/// <summary>
/// A path given to the <see cref="FileStore"/> was refused because it is malformed or could name something
/// outside the storage root. Paths arrive in messages, so this is an input error, not a bug.
/// </summary>
public sealed class StoragePathException : Exception
{
    // The message stays one readable line even when the path carries newlines or NULs.
    public StoragePathException(string path, string reason)
        : base($"Storage path '{PrintableText.Escape(path)}' is refused: {reason}.")
    {
        Path = path;
        Reason = reason;
    }

    /// <summary>The path exactly as it was given.</summary>
    public string Path { get; }

    /// <summary>Why it was refused, e.g. "it contains a '..' segment".</summary>
    public string Reason { get; }
}
