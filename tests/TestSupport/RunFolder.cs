namespace Cluster.TestSupport;

/// <summary>
/// A folder under the temp folder that lives as long as this test process: what the tests of one run share (kernel
/// verdicts, a fact about the machine), removed when the run ends so that runs do not pile folders up in /tmp.
/// </summary>
public static class RunFolder
{
    public static string Create(string prefix)
    {
        string folder = Path.Combine(Path.GetTempPath(), $"{prefix}-{Environment.ProcessId}");
        Directory.CreateDirectory(folder);
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try
            {
                Directory.Delete(folder, recursive: true);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // Best effort: a child process may still hold a file in it as the run ends.
            }
        };
        return folder;
    }
}
