using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using System.Text.Json;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Weights;

/// <summary>The fixture files, what the generating script recorded about them, and helpers to build test files.</summary>
internal static class WeightFixtures
{
    /// <summary>The file the malicious fixtures' payload would create (see make_weight_fixtures.py).</summary>
    public const string PwnedMarker = "/tmp/cluster-weights-fixture-pwned";

    public static string Path(string name) => System.IO.Path.Combine(AppContext.BaseDirectory, "Fixtures", name);

    /// <summary>
    /// The tensors of a fixture as the script recorded them in its .expected.json: PyTorch's dtype name,
    /// shape, and the raw little-endian bytes (base64). Parsed here with nothing from the loader under test.
    /// </summary>
    public static Dictionary<string, ExpectedTensor> Expected(string fixture, string section = "tensors")
    {
        using var json = JsonDocument.Parse(File.ReadAllBytes(Path($"{fixture}.expected.json")));
        var element = json.RootElement.GetProperty(section);
        if (element.TryGetProperty("base64", out _))
        {
            return new() { [section] = Read(element) };
        }
        return element.EnumerateObject().ToDictionary(entry => entry.Name, entry => Read(entry.Value));
    }

    public static ExpectedTensor ExpectedSingle(string fixture, string section) => Expected(fixture, section)[section];

    private static ExpectedTensor Read(JsonElement tensor) => new(
        tensor.GetProperty("dtype").GetString()!,
        tensor.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()).ToArray(),
        Convert.FromBase64String(tensor.GetProperty("base64").GetString()!));

    /// <summary>PyTorch's name for a dtype, as the script wrote it.</summary>
    public static string PythonName(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => "float32",
        ScalarType.Float64 => "float64",
        ScalarType.Float16 => "float16",
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Int64 => "int64",
        ScalarType.Int32 => "int32",
        ScalarType.Int16 => "int16",
        ScalarType.Int8 => "int8",
        ScalarType.Byte => "uint8",
        ScalarType.Bool => "bool",
        _ => dtype.ToString(),
    };

    /// <summary>A tensor's bytes, row-major, whatever its device or layout.</summary>
    public static byte[] Bytes(Tensor tensor)
    {
        using var cpu = tensor.detach().cpu().contiguous();
        return cpu.numel() == 0 ? [] : cpu.bytes.ToArray();
    }

    public static Tensor FromExpected(ExpectedTensor expected)
    {
        var tensor = empty(expected.Shape, float32);
        tensor.bytes = expected.Bytes;
        return tensor;
    }

    /// <summary>
    /// Writes a torch.save-style zip archive around a hand-made pickle, so a test can say exactly what the
    /// pickle holds.
    /// </summary>
    public static void WriteTorchZip(string path, byte[] pickle, IReadOnlyDictionary<string, byte[]>? storages = null)
    {
        using var zip = new ZipArchive(File.Create(path), ZipArchiveMode.Create);
        Add(zip, "archive/data.pkl", pickle);
        foreach (var (key, bytes) in storages ?? new Dictionary<string, byte[]>())
        {
            Add(zip, $"archive/data/{key}", bytes);
        }
        Add(zip, "archive/version", "3\n"u8.ToArray());

        static void Add(ZipArchive zip, string name, byte[] bytes)
        {
            using var stream = zip.CreateEntry(name, CompressionLevel.NoCompression).Open();
            stream.Write(bytes);
        }
    }
}

internal sealed record ExpectedTensor(string Dtype, long[] Shape, byte[] Bytes);

/// <summary>The same network as make_weight_fixtures.py's TinyConvNet; the field names are the state_dict keys.</summary>
internal sealed class TinyConvNet : nn.Module<Tensor, Tensor>
{
    private readonly Conv2d conv1;
    private readonly BatchNorm2d bn1;
    private readonly Linear fc;

    public TinyConvNet(int classes = 3)
        : base(nameof(TinyConvNet))
    {
        conv1 = nn.Conv2d(3, 4, 3, padding: 1);
        bn1 = nn.BatchNorm2d(4);
        fc = nn.Linear(4, classes);
        RegisterComponents();
    }

    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        var features = nn.functional.relu(bn1.call(conv1.call(input)));
        return fc.call(features.mean([2L, 3L])).MoveToOuterDisposeScope();
    }
}

/// <summary>Writes pickle opcodes by hand, for pickles torch.save would never write.</summary>
internal sealed class PickleWriter
{
    private readonly MemoryStream _bytes = new();

    public PickleWriter Op(char opcode) => Raw((byte)opcode);

    public PickleWriter Raw(params byte[] bytes)
    {
        _bytes.Write(bytes);
        return this;
    }

    public PickleWriter Proto(byte version) => Raw(0x80, version);

    public PickleWriter Global(string module, string name) => Op('c').Raw(Encoding.UTF8.GetBytes($"{module}\n{name}\n"));

    public PickleWriter Unicode(string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        var length = new byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(length, bytes.Length);
        return Op('X').Raw(length).Raw(bytes);
    }

    public PickleWriter Int(int value)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(bytes, value);
        return Op('J').Raw(bytes);
    }

    public PickleWriter Tuple(params long[] values)
    {
        Op('(');
        foreach (var value in values)
        {
            Int(checked((int)value));
        }
        return Op('t');
    }

    /// <summary>Pushes _rebuild_tensor_v2(storage key, FloatStorage of count, offset, size, stride) as torch.save writes it.</summary>
    public PickleWriter FloatTensor(string key, long count, long offset, long[] size, long[] stride)
    {
        Global("torch._utils", "_rebuild_tensor_v2").Op('(');
        Op('(').Unicode("storage").Global("torch", "FloatStorage").Unicode(key).Unicode("cpu").Int((int)count).Op('t').Op('Q');
        Int((int)offset).Tuple(size).Tuple(stride).Raw(0x89);
        Global("collections", "OrderedDict").Op(')').Op('R');
        return Op('t').Op('R');
    }

    public byte[] ToArray() => _bytes.ToArray();
}
