using System.Globalization;
using System.Text;

namespace Cluster.Storage.Files;

/// <summary>
/// Text that came from outside (a path, a file name) made safe to print on one line or put in one TSV field:
/// control characters (newlines, tabs, NULs) become \uXXXX. Paths are often refused *because* they hold one.
/// </summary>
public static class PrintableText
{
    public static string Escape(string text)
    {
        if (!text.Any(char.IsControl))
        {
            return text;
        }

        var builder = new StringBuilder(text.Length + 8);
        foreach (var c in text)
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
