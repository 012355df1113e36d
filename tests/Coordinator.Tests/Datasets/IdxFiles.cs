using System.Buffers.Binary;
using System.IO.Compression;

namespace Cluster.Coordinator.Tests.Datasets;

/// <summary>IDX files written by the tests: a tiny image/label pair, and the format's building blocks.</summary>
internal static class IdxFiles
{
    /// <summary>The labels of the five tiny images.</summary>
    public static readonly byte[] TinyLabels = [1, 0, 1, 2, 0];

    /// <summary>Five 3x2 images whose pixels are 10 × image + position, and their labels, in <paramref name="folder"/>.</summary>
    public static (string Images, string Labels) WriteTiny(string folder, bool gzip)
    {
        var pixels = Enumerable.Range(0, 5).SelectMany(TinyPixels).ToArray();
        var images = Write(folder, gzip ? "images.gz" : "images", Idx(0x803, [5, 2, 3], pixels), gzip);
        var labels = Write(folder, gzip ? "labels.gz" : "labels", Idx(0x801, [5], TinyLabels), gzip);
        return (images, labels);
    }

    public static byte[] TinyPixels(int index) => Enumerable.Range(0, 6).Select(p => (byte)((10 * index) + p)).ToArray();

    /// <summary>An IDX file: big-endian magic, the sizes, then the body.</summary>
    public static byte[] Idx(int magic, int[] sizes, byte[] body)
    {
        var bytes = new byte[4 + (4 * sizes.Length) + body.Length];
        BinaryPrimitives.WriteInt32BigEndian(bytes, magic);
        for (var i = 0; i < sizes.Length; i++)
        {
            BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(4 + (4 * i)), sizes[i]);
        }

        body.CopyTo(bytes, 4 + (4 * sizes.Length));
        return bytes;
    }

    public static string Write(string folder, string name, byte[] bytes, bool gzip = false)
    {
        var path = Path.Combine(folder, name);
        using var file = File.Create(path);
        using var stream = gzip ? new GZipStream(file, CompressionLevel.Fastest) : (Stream)file;
        stream.Write(bytes);
        return path;
    }
}
