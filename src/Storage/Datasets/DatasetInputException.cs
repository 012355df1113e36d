namespace Cluster.Storage.Datasets;

/// <summary>
/// A dataset input the user can fix: a folder that is not there, a malformed manifest line, a file that is not
/// in the format it claims. The message is one line naming the file (and line) and what is wrong with it.
/// </summary>
public sealed class DatasetInputException : Exception
{
    public DatasetInputException(string message)
        : base(message)
    {
    }

    public DatasetInputException(string message, Exception inner)
        : base(message, inner)
    {
    }
}
