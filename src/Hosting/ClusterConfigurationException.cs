namespace Cluster.Hosting;

/// <summary>
/// A problem the user can fix (bad setting, unreachable server, wrong password): its message is the one line
/// the CLI prints, naming the value and where it came from. The CLI exits with code 2.
/// </summary>
public sealed class ClusterConfigurationException : Exception
{
    public ClusterConfigurationException(string message)
        : base(message)
    {
    }

    public ClusterConfigurationException(string message, Exception inner)
        : base(message, inner)
    {
    }
}
