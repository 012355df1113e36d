using System.Globalization;
using System.Text;

namespace Cluster.Storage.Files;

/// <summary>
/// A path given to the <see cref="FileStore"/> was refused because it is malformed or could name something
/// outside the storage root. Paths arrive in messages, so this is an input error, not a bug.
/// </summary>
public sealed class StoragePathException : Exception
{
    public StoragePathException(string path, string reason)
        : base($"Storage path '{Printable(path)}' is refused: {reason}.")
    {
        Path = path;
        Reason = reason;
    }

    /// <summary>The path exactly as it was given.</summary>
    public string Path { get; }

    /// <summary>Why it was refused, e.g. "it contains a '..' segment".</summary>
    public string Reason { get; }

    // The message must stay one readable line even when the path carries newlines or NULs.
    private static string Printable(string path)
    {
        var builder = new StringBuilder(path.Length);
        foreach (var c in path)
        {
            if (char.IsControl(c))
            {
                builder.Append(CultureInfo.InvariantCulture, $"\\u{(int)c:x4}");
            }
            else
            {
                builder.Append(c);
            }
        }

        return builder.ToString();
    }
}
