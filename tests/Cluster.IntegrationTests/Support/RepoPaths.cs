using System.Reflection;

namespace Cluster.IntegrationTests.Support;

/// <summary>Where the built `coordinator` and `gpu-worker` programs are (built by this project's references).</summary>
public static class RepoPaths
{
    private static readonly string s_configuration = typeof(RepoPaths).Assembly
        .GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == "Configuration").Value!;

    public static string Root { get; } = FindRoot();

    /// <summary>
    /// Where scripts/test.sh published the programs ReadyToRun (CLUSTER_IT_BIN/coordinator, CLUSTER_IT_BIN/gpu-worker), so that
    /// the tests' hundreds of short processes do not each JIT-compile their dependencies; unset, the built programs run.
    /// </summary>
    private static readonly string? s_published = System.Environment.GetEnvironmentVariable("CLUSTER_IT_BIN") is { Length: > 0 } dir ? dir : null;

    public static string CoordinatorDll => Output("Coordinator", "coordinator", "coordinator.dll");

    public static string WorkerDll => Output("GpuWorker", "gpu-worker", "gpu-worker.dll");

    private static string Output(string project, string published, string dll)
    {
        string path = s_published is null
            ? Path.Combine(Root, "src", project, "bin", s_configuration, "net10.0", dll)
            : Path.Combine(s_published, published, dll);
        return File.Exists(path) ? path : throw new FileNotFoundException($"{dll} is not built at {path}", path);
    }

    private static string FindRoot()
    {
        for (DirectoryInfo? d = new(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "Cluster.sln")))
            {
                return d.FullName;
            }
        }
        throw new DirectoryNotFoundException("Cluster.sln not found above " + AppContext.BaseDirectory);
    }
}
