namespace Cluster.GpuWorker.Onnx;

/// <summary>
/// An ONNX file this importer cannot turn into a module: unreadable, truncated, malformed, or using an operator or
/// data type it does not implement. The message is one line that starts with the file's name and says what and where.
/// </summary>
public sealed class OnnxImportException : Exception
{
    public OnnxImportException(string message)
        : base(message)
    {
    }

    public OnnxImportException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
