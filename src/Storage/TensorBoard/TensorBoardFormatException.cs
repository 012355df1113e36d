namespace Cluster.Storage.TensorBoard;

/// <summary>
/// An event file is corrupt: a record's length or data does not match its CRC-32C, or its data is not a
/// well-formed Event. The message names the file and the byte offset of the record in one line, e.g.
/// "events.out.tfevents.1764645600.gpu-3.812.4f2a: record at byte 1024: data CRC-32C is 5f1c0a9e, the record
/// says 0b8e73d2".
/// </summary>
public sealed class TensorBoardFormatException : FormatException
{
    public TensorBoardFormatException(string fileName, long offset, string problem, Exception? innerException = null)
        : base($"{fileName}: record at byte {offset}: {problem}", innerException)
    {
        FileName = fileName;
        Offset = offset;
        Problem = problem;
    }

    /// <summary>The event file the bad record is in.</summary>
    public string FileName { get; }

    /// <summary>Where the bad record starts in the file.</summary>
    public long Offset { get; }

    /// <summary>What is wrong, without the file name and offset.</summary>
    public string Problem { get; }
}
