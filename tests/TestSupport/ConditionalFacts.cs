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
