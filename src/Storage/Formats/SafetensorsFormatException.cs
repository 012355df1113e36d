namespace Cluster.Storage.Formats;

/// <summary>
/// A safetensors file is malformed, truncated or inconsistent. The message names the file and what is wrong
/// with it in one line, e.g. "weights.safetensors: tensor 'fc.weight' data_offsets [0, 100] do not match
/// shape [10, 5] of F32 (200 bytes)". Files come from users and other machines, so this is an input error.
/// </summary>
public sealed class SafetensorsFormatException : FormatException
{
    public SafetensorsFormatException(string fileName, string problem, Exception? innerException = null)
        : base($"{fileName}: {problem}", innerException)
    {
        FileName = fileName;
        Problem = problem;
    }

    /// <summary>The file (or the name the caller gave a stream) the problem is in.</summary>
    public string FileName { get; }

    /// <summary>What is wrong, without the file name.</summary>
    public string Problem { get; }
}
