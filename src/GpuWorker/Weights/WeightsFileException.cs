namespace Cluster.GpuWorker.Weights;

/// <summary>
/// A weights file could not be loaded: it is missing, truncated, corrupt, in a format we do not read, or
/// refused as unsafe. The message is one line that names the file and the problem, e.g.
/// "resnet18.pt: the zip archive is truncated or corrupt (...)". Weights come from users, so this is an input
/// error, never a crash.
/// </summary>
public class WeightsFileException : Exception
{
    public WeightsFileException(string filePath, string problem, Exception? innerException = null)
        : base($"{filePath}: {problem}", innerException)
    {
        FilePath = filePath;
        Problem = problem;
    }

    /// <summary>The file as the caller named it.</summary>
    public string FilePath { get; }

    /// <summary>What is wrong, without the file name.</summary>
    public string Problem { get; }
}

/// <summary>
/// A PyTorch file was refused because its pickle asks for something other than tensors, storages and
/// ordered dicts: a Python callable that, unpickled the usual way, could run arbitrary code. Nothing in the
/// file was executed.
/// </summary>
public sealed class UnsafeWeightsFileException : WeightsFileException
{
    public UnsafeWeightsFileException(string filePath, string forbiddenGlobal)
        : base(
            filePath,
            $"refusing to load: the pickle references {forbiddenGlobal}, which is not a tensor, storage or ordered dict; loading it could execute code")
    {
        ForbiddenGlobal = forbiddenGlobal;
    }

    /// <summary>The module-qualified name the pickle asked for, e.g. "posix.system".</summary>
    public string ForbiddenGlobal { get; }
}
