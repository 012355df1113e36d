using Cluster.Hosting;

namespace Cluster.Coordinator.Specs;

/// <summary>
/// A sweep spec the user must fix: the message is one line naming the file, the line, the field, the value given and
/// what is allowed. A <see cref="ClusterConfigurationException"/>, so the CLI prints it as one line and exits with 2.
/// </summary>
public sealed class SpecException : ClusterConfigurationException
{
    public SpecException(string message)
        : base(message)
    {
    }

    public SpecException(string message, Exception inner)
        : base(message, inner)
    {
    }
}
