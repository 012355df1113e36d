using System.Buffers.Binary;
using System.Text.Json;

namespace Cluster.IntegrationTests.Support;

/// <summary>
/// A minimal safetensors reader written from the format's description, independent of the project's reader:
/// what a Python user's `safetensors.numpy.load_file` sees.
/// </summary>
public sealed class SafetensorsFile
{
    private SafetensorsFile(Dictionary<string, (string Dtype, long[] Shape, byte[] Data)> tensors) => Tensors = tensors;

    public IReadOnlyDictionary<string, (string Dtype, long[] Shape, byte[] Data)> Tensors { get; }

    public static SafetensorsFile Read(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        long headerLength = BinaryPrimitives.ReadInt64LittleEndian(bytes);
        using JsonDocument header = JsonDocument.Parse(bytes.AsMemory(8, (int)headerLength));
        var tensors = new Dictionary<string, (string, long[], byte[])>();
        foreach (JsonProperty entry in header.RootElement.EnumerateObject().Where(p => p.Name != "__metadata__"))
        {
            long[] offsets = entry.Value.GetProperty("data_offsets").EnumerateArray().Select(o => o.GetInt64()).ToArray();
            long start = 8 + headerLength + offsets[0];
            tensors[entry.Name] = (
                entry.Value.GetProperty("dtype").GetString()!,
                entry.Value.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()).ToArray(),
                bytes[(int)start..(int)(8 + headerLength + offsets[1])]);
        }
        return new SafetensorsFile(tensors);
    }

    public float[] Floats(string name) => System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(Tensors[name].Data).ToArray();

    public long[] Longs(string name) => System.Runtime.InteropServices.MemoryMarshal.Cast<byte, long>(Tensors[name].Data).ToArray();
}
