using System.Reflection;

namespace Cluster.IntegrationTests.Support;

/// <summary>Where the built `coordinator` and `gpu-worker` programs are (built by this project's references).</summary>
public static class RepoPaths
{
    private static readonly string s_configuration = typeof(RepoPaths).Assembly
        .GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == "Configuration").Value!;

    public static string Root { get; } = FindRoot();

    public static string CoordinatorDll => Output("Coordinator", "coordinator.dll");

    public static string WorkerDll => Output("GpuWorker", "gpu-worker.dll");

    private static string Output(string project, string dll)
    {
        string path = Path.Combine(Root, "src", project, "bin", s_configuration, "net10.0", dll);
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
