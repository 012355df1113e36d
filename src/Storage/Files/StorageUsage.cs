using Cluster.Storage.Checkpoints;

namespace Cluster.Storage.Files;

/// <summary>One folder's share of the storage root.</summary>
public sealed record UsageEntry(string Path, long Bytes, int Files);

/// <summary>What a trial keeps: its checkpoint segments and their bytes.</summary>
public sealed record TrialCheckpointUsage(string SweepId, string TrialId, IReadOnlyList<int> Segments, long Bytes, string Path);

/// <summary>
/// What the storage root holds, by DESIGN.md's layout: each top-level area (datasets, features, weights, checkpoints,
/// reports, anything else), every feature set, and every trial's checkpoints. Symlinks are not followed.
/// </summary>
public sealed record StorageUsage(string Root, long TotalBytes, IReadOnlyList<UsageEntry> Areas, IReadOnlyList<UsageEntry> FeatureSets, IReadOnlyList<TrialCheckpointUsage> Checkpoints)
{
    public static StorageUsage Measure(FileStore files)
    {
        ArgumentNullException.ThrowIfNull(files);
        UsageEntry Entry(string path) => new(path, files.UsageBytes(path), FileCount(files.Resolve(path)));
        List<UsageEntry> areas = [.. files.List("").Where(p => Directory.Exists(files.Resolve(p))).Select(Entry)];
        // Files directly in the root (an embedded run's SQLite database, for one) count too, as one line.
        string[] rootFiles = [.. files.List("").Where(p => File.Exists(files.Resolve(p)))];
        if (rootFiles.Length > 0)
        {
            areas.Add(new UsageEntry("(files in the root)", rootFiles.Sum(p => new FileInfo(files.Resolve(p)).Length), rootFiles.Length));
        }
        List<UsageEntry> featureSets = [.. files.List("features").Where(p => Directory.Exists(files.Resolve(p))).Select(Entry).OrderByDescending(e => e.Bytes)];
        var checkpoints = new CheckpointStore(files);
        var trials = new List<TrialCheckpointUsage>();
        foreach (string sweep in files.List("checkpoints").Where(p => Directory.Exists(files.Resolve(p))))
        {
            foreach (string trial in files.List(sweep).Where(p => Directory.Exists(files.Resolve(p))))
            {
                string sweepId = System.IO.Path.GetFileName(sweep);
                string trialId = System.IO.Path.GetFileName(trial);
                trials.Add(new TrialCheckpointUsage(sweepId, trialId, [.. checkpoints.Segments(sweepId, trialId).Order()], files.UsageBytes(trial), trial));
            }
        }
        long total = files.UsageBytes("");
        return new StorageUsage(files.Root, total, areas, featureSets, [.. trials.OrderByDescending(t => t.Bytes)]);
    }

    private static int FileCount(string directory) =>
        Directory.Exists(directory)
            ? Directory.EnumerateFiles(directory, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.ReparsePoint }).Count()
            : 0;
}
