namespace Cluster.TestSupport;

/// <summary>
/// A test that needs file permissions to hold: root reads any file whatever its mode, so under root (as in CI
/// containers) it is reported as skipped rather than passing without having checked anything.
/// </summary>
public sealed class UnprivilegedFactAttribute : FactAttribute
{
    public UnprivilegedFactAttribute()
    {
        if (Environment.IsPrivilegedProcess)
        {
            Skip = "runs as root, which reads files whatever their mode";
        }
    }
}

/// <summary>A test over real data that is installed separately: skipped, saying what to install, where it is missing.</summary>
public sealed class FactWhenFileExistsAttribute : FactAttribute
{
    public FactWhenFileExistsAttribute(string path, string howToInstall)
    {
        if (!File.Exists(path))
        {
            Skip = $"{path} is missing ({howToInstall})";
        }
    }
}

/// <summary>A measurement rather than a check: runs only with CLUSTER_BENCHMARKS=1, so the test suite stays fast.</summary>
public sealed class BenchmarkFactAttribute : FactAttribute
{
    public BenchmarkFactAttribute()
    {
        if (Environment.GetEnvironmentVariable("CLUSTER_BENCHMARKS") != "1")
        {
            Skip = "a benchmark; set CLUSTER_BENCHMARKS=1 to run it";
        }
    }
}

/// <summary>
/// A test on a small file system of its own (tmpfs mounted for it: a full or read-only volume, for real): needs root
/// with the right to mount, as in CI; skipped, saying so, elsewhere.
/// </summary>
public sealed class FactWhenMountableAttribute : FactAttribute
{
    private static readonly Lazy<string?> s_why = new(Probe);

    public FactWhenMountableAttribute()
    {
        if (s_why.Value is string why)
        {
            Skip = why;
        }
    }

    private static string? Probe()
    {
        if (!OperatingSystem.IsLinux() || !Environment.IsPrivilegedProcess)
        {
            return "needs root on Linux to mount a small tmpfs";
        }
        string folder = Directory.CreateTempSubdirectory("mount-probe-").FullName;
        try
        {
            if (ExternalCommand.Run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", folder).ExitCode != 0)
            {
                return "mount -t tmpfs is not permitted here (no CAP_SYS_ADMIN)";
            }
            ExternalCommand.Run("umount", folder);
            return null;
        }
        finally
        {
            Directory.Delete(folder);
        }
    }
}
