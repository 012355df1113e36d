using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Cluster.Storage.Formats;
using Shouldly;

namespace Cluster.Storage.Tests;

public sealed class SafetensorsTests : IDisposable
{
    private const string Name = "weights.safetensors";

    private readonly string _folder = Path.Combine(Path.GetTempPath(), "safetensors-tests-" + Guid.NewGuid().ToString("N"));

    public SafetensorsTests() => Directory.CreateDirectory(_folder);

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Fact]
    public void Round_trip_keeps_names_dtypes_shapes_bytes_and_metadata()
    {
        var tensors = SampleTensors();
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["model"] = "resnet18 ✓" };

        var file = WriteToBytes(tensors, metadata);

        using var reader = new SafetensorsReader(new MemoryStream(file), Name);
        reader.Metadata.ShouldBe(metadata, ignoreOrder: true);
        reader.Tensors.Select(t => t.Name).ShouldBe(tensors.Select(t => t.Name).Order(StringComparer.Ordinal));
        foreach (var expected in tensors)
        {
            var actual = reader.GetTensor(expected.Name);
            actual.Dtype.ShouldBe(expected.Dtype);
            actual.Shape.ShouldBe(expected.Shape);
            reader.ReadTensorBytes(expected.Name).ShouldBe(expected.Data.ToArray());
        }
    }

    [Fact]
    public void Header_is_readable_by_an_independent_minimal_parser()
    {
        var tensors = SampleTensors();

        var file = WriteToBytes(tensors, new Dictionary<string, string> { ["note"] = "x" });

        var parsed = MinimalParser.Parse(file);
        parsed.Metadata.ShouldBe(new Dictionary<string, string> { ["note"] = "x" });
        parsed.Tensors.Keys.ShouldBe(tensors.Select(t => t.Name), ignoreOrder: true);
        foreach (var expected in tensors)
        {
            var (dtype, shape, data) = parsed.Tensors[expected.Name];
            dtype.ShouldBe(expected.Dtype.ToString());
            shape.ShouldBe(expected.Shape);
            data.ShouldBe(expected.Data.ToArray());
        }
    }

    [Fact]
    public void Header_is_padded_with_spaces_so_the_data_starts_8_byte_aligned()
    {
        var file = WriteToBytes([new SafetensorsTensor("a", SafetensorsDtype.F64, [1], new byte[8])]);

        var headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(file);
        (headerLength % 8).ShouldBe(0);
        var header = Encoding.UTF8.GetString(file, 8, (int)headerLength);
        header.ShouldStartWith("{");
        header.TrimEnd(' ').ShouldEndWith("}");
    }

    [Fact]
    public void The_same_tensors_in_any_order_give_the_same_bytes()
    {
        var tensors = SampleTensors();

        var forwards = WriteToBytes(tensors);
        var backwards = WriteToBytes(tensors.AsEnumerable().Reverse().ToList());

        backwards.ShouldBe(forwards);
    }

    [Fact]
    public void Writer_takes_a_tensor_in_pieces_and_empty_tensors_need_no_call()
    {
        var features = Enumerable.Range(0, 48).Select(i => (byte)i).ToArray();
        var rows = new byte[16];
        BinaryPrimitives.WriteInt64LittleEndian(rows, 7);
        BinaryPrimitives.WriteInt64LittleEndian(rows.AsSpan(8), 8);
        using var stream = new MemoryStream();

        var writer = SafetensorsWriter.Begin(
            stream,
            [
                new SafetensorsEntry("rows", SafetensorsDtype.I64, [2]),
                new SafetensorsEntry("features", SafetensorsDtype.F32, [2, 6]),
                new SafetensorsEntry("empty", SafetensorsDtype.F32, [0, 6]),
            ]);
        writer.Layout.Select(t => t.Name).ShouldBe(["empty", "features", "rows"]);
        writer.Write("features", features.AsSpan(0, 20));
        writer.Write("features", features.AsSpan(20));
        writer.Write("rows", rows);
        writer.Complete();

        using var reader = new SafetensorsReader(new MemoryStream(stream.ToArray()), Name);
        reader.ReadTensorBytes("features").ShouldBe(features);
        reader.ReadTensorBytes("rows").ShouldBe(rows);
        reader.GetTensor("empty").ElementCount.ShouldBe(0);
        var secondRow = new byte[24];
        reader.ReadTensor(reader.GetTensor("features"), 24, secondRow);
        secondRow.ShouldBe(features[24..]);
    }

    [Fact]
    public void Writer_refuses_data_out_of_order_too_much_data_and_an_incomplete_file()
    {
        var writer = SafetensorsWriter.Begin(
            new MemoryStream(),
            [new SafetensorsEntry("a", SafetensorsDtype.U8, [2]), new SafetensorsEntry("b", SafetensorsDtype.U8, [2])]);

        Should.Throw<InvalidOperationException>(() => writer.Write("b", new byte[2])).Message.ShouldContain("'a' is next");
        Should.Throw<ArgumentException>(() => writer.Write("a", new byte[3])).Message.ShouldContain("do not fit");
        writer.Write("a", new byte[2]);
        Should.Throw<InvalidOperationException>(() => writer.Complete()).Message.ShouldContain("Tensor 'b' has 0 of its 2 bytes");
    }

    [Fact]
    public void Writer_refuses_duplicate_names_the_metadata_key_and_negative_dimensions()
    {
        Should.Throw<ArgumentException>(() => SafetensorsWriter.Begin(
            new MemoryStream(),
            [new SafetensorsEntry("a", SafetensorsDtype.U8, [1]), new SafetensorsEntry("a", SafetensorsDtype.U8, [1])]));
        Should.Throw<ArgumentException>(() => SafetensorsWriter.Begin(
            new MemoryStream(), [new SafetensorsEntry("__metadata__", SafetensorsDtype.U8, [1])]));
        Should.Throw<ArgumentException>(() => SafetensorsWriter.Begin(
            new MemoryStream(), [new SafetensorsEntry("a", SafetensorsDtype.U8, [-1])]));
    }

    [Fact]
    public void Opening_a_file_reads_only_the_header_and_names_the_path_in_errors()
    {
        var path = Path.Combine(_folder, "model.safetensors");
        File.WriteAllBytes(path, WriteToBytes(SampleTensors()));

        using (var reader = SafetensorsReader.Open(path))
        {
            reader.FileName.ShouldBe(path);
            reader.DataStart.ShouldBe(8 + reader.HeaderLength);
            reader.ReadTensorBytes("fc.bias").Length.ShouldBe(12);
        }

        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^5]);
        var error = Should.Throw<SafetensorsFormatException>(() => SafetensorsReader.Open(path));
        error.Message.ShouldStartWith(path + ": ");
        error.FileName.ShouldBe(path);
    }

    [Fact]
    public void Shape_that_does_not_match_the_byte_range_is_named_with_both()
    {
        var file = Raw("""{"fc.weight":{"dtype":"F32","shape":[10,5],"data_offsets":[0,100]}}""", new byte[100]);

        var error = Should.Throw<SafetensorsFormatException>(() => new SafetensorsReader(new MemoryStream(file), Name));

        error.Message.ShouldBe("weights.safetensors: tensor 'fc.weight' data_offsets [0, 100] do not match shape [10, 5] of F32 (200 bytes)");
    }

    public static TheoryData<string, byte[], string> CorruptFiles()
    {
        var valid = WriteToBytes(SampleTensors());
        var validHeaderLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(valid);
        return new TheoryData<string, byte[], string>
        {
            { "empty file", [], "the file is 0 bytes long, too short" },
            { "shorter than the length prefix", [1, 0, 0], "the file is 3 bytes long, too short" },
            { "truncated inside the header", valid[..(8 + validHeaderLength / 2)], "is larger than the rest of the file" },
            { "truncated inside the data", valid[..^3], "are outside the data buffer" },
            { "header length larger than the file", WithLength(valid, 1L << 40), $"the header length {1L << 40} is larger than the rest of the file" },
            { "header length zero", WithLength(valid, 0), "the header length is 0" },
            { "bad JSON", Raw("""{"a":{"dtype":"F32","shape":[1],""", new byte[4]), "the header is not valid JSON" },
            { "invalid UTF-8", Raw("{\"a\xff\":{}}", [], latin1: true), "the header is not valid UTF-8" },
            { "header not an object", Raw("[1,2]", []), "the header is a JSON array, not an object of tensors" },
            { "tensor not an object", Raw("""{"a":5}""", []), "tensor 'a' is a JSON number, not an object" },
            { "missing dtype", Raw("""{"a":{"shape":[1],"data_offsets":[0,4]}}""", new byte[4]), "tensor 'a' has no dtype string" },
            { "unknown dtype", Raw("""{"a":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}""", new byte[4]), "tensor 'a' has unknown dtype 'F8_E4M3'" },
            { "dtype in the wrong case", Raw("""{"a":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}""", new byte[4]), "unknown dtype 'f32'" },
            { "negative dimension", Raw("""{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}""", new byte[4]), "tensor 'a' shape is not an array of non-negative integers: [-1]" },
            { "fractional dimension", Raw("""{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}""", new byte[4]), "shape is not an array of non-negative integers" },
            { "three offsets", Raw("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}""", new byte[4]), "data_offsets is not an array of 2 non-negative integers" },
            { "offsets reversed", Raw("""{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}""", new byte[4]), "data_offsets [4, 0] end before they begin" },
            { "offsets out of bounds", Raw("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", new byte[8]), "tensor 'a' data_offsets [4, 12] are outside the data buffer (8 bytes)" },
            { "overflowing shape", Raw("""{"a":{"dtype":"F64","shape":[4611686018427387904,4],"data_offsets":[0,8]}}""", new byte[8]), "has more bytes than a file can" },
            {
                "overlapping offsets",
                Raw("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", new byte[12]),
                "tensor 'b' data_offsets [4, 12] overlap tensor 'a' data_offsets [0, 8]"
            },
            {
                "aliased tensors",
                Raw("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}}""", new byte[8]),
                "overlap tensor 'a'"
            },
            {
                "gap between tensors",
                Raw("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}""", new byte[12]),
                "bytes [4, 8) of the data buffer belong to no tensor"
            },
            { "bytes after the last tensor", Raw("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", new byte[9]), "bytes [4, 9) at the end of the data buffer belong to no tensor" },
            {
                "duplicate name",
                Raw("""{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}""", new byte[2]),
                "the header names 'a' twice"
            },
            { "metadata not strings", Raw("""{"__metadata__":{"epoch":3}}""", []), "__metadata__ entry 'epoch' is a JSON number, not a string" },
            { "control characters in a name stay on one line", Raw("{\"a\\nb\":{\"dtype\":\"BAD\",\"shape\":[],\"data_offsets\":[0,0]}}", []), "tensor 'a\\u000ab' has unknown dtype 'BAD'" },
        };
    }

    [Theory]
    [MemberData(nameof(CorruptFiles))]
    public void Corrupt_file_is_refused_with_the_file_name_and_the_problem(string corruption, byte[] file, string problem)
    {
        var error = Should.Throw<SafetensorsFormatException>(() => new SafetensorsReader(new MemoryStream(file), Name), corruption);

        error.Message.ShouldStartWith(Name + ": ");
        error.Message.ShouldContain(problem);
        error.Message.ShouldNotContain('\n');
    }

    [Fact]
    public void Header_length_over_the_limit_is_refused_before_anything_is_allocated()
    {
        // A sparse file: as long as a huge header needs, without writing 100 MB.
        var path = Path.Combine(_folder, "huge.safetensors");
        using (var stream = File.Create(path))
        {
            stream.Write(Raw("{}", [], declaredLength: 200_000_000));
            stream.SetLength(300_000_000);
        }

        var error = Should.Throw<SafetensorsFormatException>(() => SafetensorsReader.Open(path));

        error.Message.ShouldBe($"{path}: the header length 200000000 is over the 100000000-byte limit for a safetensors header");
    }

    [Fact]
    public void Empty_header_is_a_valid_file_without_tensors()
    {
        using var reader = new SafetensorsReader(new MemoryStream(Raw("{}", [])), Name);

        reader.Tensors.ShouldBeEmpty();
        reader.Metadata.ShouldBeEmpty();
    }

    [Fact]
    public void Reading_a_missing_tensor_names_the_file()
    {
        using var reader = new SafetensorsReader(new MemoryStream(WriteToBytes(SampleTensors())), Name);

        Should.Throw<KeyNotFoundException>(() => reader.GetTensor("nope")).Message.ShouldContain("weights.safetensors: there is no tensor named 'nope'");
    }

    private static List<SafetensorsTensor> SampleTensors()
    {
        static byte[] Bytes(int count, int seed) => Enumerable.Range(0, count).Select(i => (byte)(i * 31 + seed)).ToArray();
        return
        [
            new("fc.weight", SafetensorsDtype.F32, [3, 4], Bytes(48, 1)),
            new("fc.bias", SafetensorsDtype.F32, [3], Bytes(12, 2)),
            new("bn.num_batches_tracked", SafetensorsDtype.I64, [], Bytes(8, 3)),
            new("half", SafetensorsDtype.F16, [2, 1, 3], Bytes(12, 4)),
            new("brain", SafetensorsDtype.BF16, [5], Bytes(10, 5)),
            new("double", SafetensorsDtype.F64, [2], Bytes(16, 6)),
            new("mask", SafetensorsDtype.BOOL, [3], new byte[] { 1, 0, 1 }),
            new("bytes", SafetensorsDtype.U8, [3], Bytes(3, 7)),
            new("chars", SafetensorsDtype.I8, [1], Bytes(1, 8)),
            new("shorts", SafetensorsDtype.I16, [2], Bytes(4, 9)),
            new("ints", SafetensorsDtype.I32, [2], Bytes(8, 10)),
            new("empty", SafetensorsDtype.F32, [0, 3], Array.Empty<byte>()),
            new("ünïcode.name", SafetensorsDtype.U8, [1], Bytes(1, 11)),
        ];
    }

    private static byte[] WriteToBytes(IReadOnlyList<SafetensorsTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        using var stream = new MemoryStream();
        Safetensors.Write(stream, tensors, metadata);
        return stream.ToArray();
    }

    private static byte[] WithLength(byte[] file, long declaredLength)
    {
        var copy = (byte[])file.Clone();
        BinaryPrimitives.WriteInt64LittleEndian(copy, declaredLength);
        return copy;
    }

    // A file built by hand, so a test can say exactly what is wrong with it.
    private static byte[] Raw(string header, byte[] data, long? declaredLength = null, bool latin1 = false)
    {
        var padded = latin1 ? Encoding.Latin1.GetBytes(header) : Encoding.UTF8.GetBytes(header);
        var file = new byte[8 + padded.Length + data.Length];
        BinaryPrimitives.WriteInt64LittleEndian(file, declaredLength ?? padded.Length);
        padded.CopyTo(file, 8);
        data.CopyTo(file, 8 + padded.Length);
        return file;
    }

    /// <summary>
    /// A deliberately separate reading of the format from its specification (no code shared with the reader):
    /// u64 little-endian header length, JSON header, data sliced by data_offsets from the end of the header.
    /// </summary>
    private static class MinimalParser
    {
        public static (Dictionary<string, (string Dtype, long[] Shape, byte[] Data)> Tensors, Dictionary<string, string> Metadata) Parse(byte[] file)
        {
            var n = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(file));
            using var json = JsonDocument.Parse(file.AsMemory(8, n));
            var tensors = new Dictionary<string, (string, long[], byte[])>();
            var metadata = new Dictionary<string, string>();
            foreach (var entry in json.RootElement.EnumerateObject())
            {
                if (entry.Name == "__metadata__")
                {
                    foreach (var item in entry.Value.EnumerateObject())
                    {
                        metadata[item.Name] = item.Value.GetString()!;
                    }
                    continue;
                }
                var offsets = entry.Value.GetProperty("data_offsets").EnumerateArray().Select(o => o.GetInt32()).ToArray();
                tensors[entry.Name] = (
                    entry.Value.GetProperty("dtype").GetString()!,
                    entry.Value.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()).ToArray(),
                    file[(8 + n + offsets[0])..(8 + n + offsets[1])]);
            }
            return (tensors, metadata);
        }
    }
}
