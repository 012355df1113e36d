namespace Cluster.GpuWorker.Models;

/// <summary>Names of the 1000 ImageNet (ILSVRC-2012) classes, in the order of a 1000-class head's outputs.</summary>
public static class ImageNetClasses
{
    private static readonly Lazy<IReadOnlyList<string>> s_names = new(() =>
    {
        using Stream stream = typeof(ImageNetClasses).Assembly.GetManifestResourceStream("imagenet-classes.txt")
            ?? throw new InvalidOperationException("the ImageNet class names resource is missing from the build");
        using var reader = new StreamReader(stream);
        var names = new List<string>(1000);
        while (reader.ReadLine() is string line)
        {
            if (line.Length > 0)
            {
                names.Add(line);
            }
        }
        return names;
    });

    public static IReadOnlyList<string> Names => s_names.Value;
}
