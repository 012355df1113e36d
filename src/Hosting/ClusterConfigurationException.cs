namespace Cluster.Hosting;

/// <summary>
/// A problem the user can fix (bad setting, unreachable server, wrong password): its message is the one line
/// the CLI prints, naming the value and where it came from. The CLI exits with code 2.
/// Not sealed: an area with its own kind of user error (a sweep spec's `SpecException`) derives from it, so the CLI
/// reports every such error the same way without a catch for each.
/// </summary>
public class ClusterConfigurationException : Exception
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
