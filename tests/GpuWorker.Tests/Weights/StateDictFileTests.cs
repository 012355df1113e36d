using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Weights;
using Shouldly;
using TorchSharp;
using static Cluster.GpuWorker.Tests.Weights.WeightFixtures;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Weights;

public sealed class StateDictFileTests : IDisposable
{
    private static readonly string[] TinyConvNetKeys =
    [
        "conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
        "bn1.num_batches_tracked", "fc.weight", "fc.bias",
    ];

    private readonly string _folder = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "weights-tests-" + Guid.NewGuid().ToString("N"));

    public StateDictFileTests()
    {
        TorchRuntime.Initialize();
        Directory.CreateDirectory(_folder);
    }

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Fact]
    public void PyTorch_state_dict_loads_with_exactly_the_values_the_script_recorded()
    {
        using var weights = StateDictFile.Load(WeightFixtures.Path("tiny_convnet.pt"));

        weights.Format.ShouldBe(WeightsFormat.PyTorchZip);
        weights.Keys.ShouldBe(TinyConvNetKeys);
        weights.Notes.ShouldBeEmpty();
        ShouldEqualExpected(weights, Expected("tiny_convnet"));
    }

    [Fact]
    public void Safetensors_written_by_hand_in_python_loads_with_the_same_values()
    {
        using var weights = StateDictFile.Load(WeightFixtures.Path("tiny_convnet.safetensors"));

        weights.Format.ShouldBe(WeightsFormat.Safetensors);
        weights.Metadata["written_by"].ShouldBe("make_weight_fixtures.py");
        ShouldEqualExpected(weights, Expected("tiny_convnet"));
    }

    [Fact]
    public void Views_with_offsets_and_strides_and_every_dtype_load_bit_for_bit()
    {
        using var weights = StateDictFile.Load(WeightFixtures.Path("views_and_dtypes.pt"));

        ShouldEqualExpected(weights, Expected("views_and_dtypes"));
        weights["transposed"].is_contiguous().ShouldBeTrue();
    }

    [Fact]
    public void Network_with_the_loaded_weights_computes_what_pytorch_computed()
    {
        using var module = new TinyConvNet();
        using var weights = StateDictFile.Load(WeightFixtures.Path("tiny_convnet.pt"));

        var report = WeightsLoader.Apply(module, weights);
        module.eval();
        using var input = FromExpected(ExpectedSingle("tiny_convnet", "input"));
        using var expected = FromExpected(ExpectedSingle("tiny_convnet", "output"));
        using var output = module.call(input);

        report.IsExactMatch.ShouldBeTrue();
        report.Loaded.ShouldBe(9);
        output.allclose(expected, rtol: 1e-5, atol: 1e-6).ShouldBeTrue();
    }

    [Fact]
    public void Checkpoint_nesting_the_weights_under_state_dict_with_the_dataparallel_prefix_loads_them_with_notes()
    {
        using var weights = StateDictFile.Load(WeightFixtures.Path("checkpoint_dataparallel.pt"));

        weights.Keys.ShouldBe(TinyConvNetKeys);
        ShouldEqualExpected(weights, Expected("tiny_convnet"));
        weights.Notes.ShouldContain(note => note.Contains("'state_dict' entry") && note.Contains("epoch"));
        weights.Notes.ShouldContain(note => note.Contains("'module.'") && note.Contains("DataParallel"));

        using var module = new TinyConvNet();
        var report = WeightsLoader.Apply(module, weights);
        report.Notes.ShouldBe(weights.Notes);
        report.ToString().ShouldContain("Note: Every key started with 'module.'");
    }

    [Fact]
    public void Pickle_that_calls_os_system_is_refused_and_nothing_runs()
    {
        File.Delete(PwnedMarker);
        var path = WeightFixtures.Path("malicious_system.pt");

        var error = Should.Throw<UnsafeWeightsFileException>(() => StateDictFile.Load(path));

        error.Message.ShouldBe(
            $"{path}: refusing to load: the pickle references posix.system, which is not a tensor, storage or ordered dict; loading it could execute code");
        error.ForbiddenGlobal.ShouldBe("posix.system");
        File.Exists(PwnedMarker).ShouldBeFalse("the payload creates this file when it runs");
    }

    [Fact]
    public void Pickle_that_calls_eval_is_refused_and_nothing_runs()
    {
        File.Delete(PwnedMarker);

        var error = Should.Throw<UnsafeWeightsFileException>(() => StateDictFile.Load(WeightFixtures.Path("malicious_eval.pt")));

        error.ForbiddenGlobal.ShouldBe("__builtin__.eval");
        File.Exists(PwnedMarker).ShouldBeFalse();
    }

    [Theory]
    [InlineData("subprocess", "Popen")]
    [InlineData("builtins", "exec")]
    [InlineData("torch", "load")]
    [InlineData("torch._utils", "_rebuild_device_tensor_from_numpy")]
    [InlineData("numpy.core.multiarray", "_reconstruct")]
    public void Stack_global_to_anything_off_the_allow_list_is_refused(string module, string name)
    {
        var path = System.IO.Path.Combine(_folder, "stack_global.pt");
        var pickle = new PickleWriter().Proto(4)
            .Op('}').Unicode("x").Unicode(module).Unicode(name).Raw(0x93).Unicode("arg").Raw(0x85).Op('R').Op('s').Op('.')
            .ToArray();
        WriteTorchZip(path, pickle);

        var error = Should.Throw<UnsafeWeightsFileException>(() => StateDictFile.Load(path));

        error.ForbiddenGlobal.ShouldBe($"{module}.{name}");
        error.Message.ShouldStartWith(path + ": refusing to load");
    }

    [Fact]
    public void Legacy_torch_save_format_is_refused_with_advice()
    {
        var path = WeightFixtures.Path("legacy_format.pt");

        var error = Should.Throw<WeightsFileException>(() => StateDictFile.Load(path));

        error.Message.ShouldStartWith(path + ": ");
        error.Message.ShouldContain("before PyTorch 1.6");
        error.Message.ShouldContain("re-save it");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    [InlineData(100)]
    [InlineData(1000)]
    [InlineData(2000)]
    [InlineData(-22)]
    [InlineData(-1)]
    public void Truncated_pytorch_file_is_refused_naming_the_file(int keep)
    {
        var path = Truncated("tiny_convnet.pt", keep);

        var error = Should.Throw<WeightsFileException>(() => StateDictFile.Load(path));

        error.Message.ShouldStartWith(path + ": ");
        error.Message.ShouldNotContain('\n');
    }

    [Theory]
    [InlineData(0)]
    [InlineData(5)]
    [InlineData(8)]
    [InlineData(50)]
    [InlineData(-100)]
    [InlineData(-1)]
    public void Truncated_safetensors_is_refused_naming_the_file(int keep)
    {
        var path = Truncated("tiny_convnet.safetensors", keep);

        var error = Should.Throw<WeightsFileException>(() => StateDictFile.Load(path));

        error.Message.ShouldStartWith(path + ": ");
        error.Message.ShouldNotContain('\n');
    }

    [Theory]
    [InlineData("noise.pt", 1, 4096)]
    [InlineData("noise.pth", 2, 100)]
    [InlineData("noise.safetensors", 3, 4096)]
    [InlineData("noise.bin", 4, 7)]
    [InlineData("noise", 5, 1)]
    [InlineData("noise.pt", 6, 1_000_000)]
    public void Random_bytes_are_refused_naming_the_file(string name, int seed, int length)
    {
        var path = System.IO.Path.Combine(_folder, name);
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        File.WriteAllBytes(path, bytes);

        var error = Should.Throw<WeightsFileException>(() => StateDictFile.Load(path));

        error.Message.ShouldStartWith(path + ": ");
    }

    [Fact]
    public void Flipped_bit_in_a_stored_tensor_is_caught_by_the_archive_checksum()
    {
        var bytes = File.ReadAllBytes(WeightFixtures.Path("tiny_convnet.pt"));
        var at = bytes.AsSpan().IndexOf(Expected("tiny_convnet")["conv1.bias"].Bytes);
        at.ShouldBeGreaterThan(0);
        bytes[at + 3] ^= 0x01;
        var path = System.IO.Path.Combine(_folder, "flipped.pt");
        File.WriteAllBytes(path, bytes);

        var error = Should.Throw<WeightsFileException>(() => StateDictFile.Load(path));

        error.Message.ShouldStartWith($"{path}: data/");
        error.Message.ShouldContain("is corrupt: its CRC-32 is");
    }

    [Fact]
    public void Corrupt_local_header_inside_the_archive_is_refused_naming_the_file()
    {
        var bytes = File.ReadAllBytes(WeightFixtures.Path("tiny_convnet.pt"));
        var secondEntry = bytes.AsSpan(4).IndexOf("PK\x03\x04"u8) + 4;
        secondEntry.ShouldBeGreaterThan(4);
        bytes[secondEntry + 2] = 0xff;
        var path = System.IO.Path.Combine(_folder, "bad_header.pt");
        File.WriteAllBytes(path, bytes);

        var error = Should.Throw<WeightsFileException>(() => StateDictFile.Load(path));

        error.Message.ShouldStartWith($"{path}: the zip archive is corrupt");
    }

    [Fact]
    public void Pickle_holding_a_list_instead_of_a_dict_is_refused()
    {
        var path = System.IO.Path.Combine(_folder, "list.pt");
        WriteTorchZip(path, new PickleWriter().Proto(2).Op(']').Op('.').ToArray());

        Should.Throw<WeightsFileException>(() => StateDictFile.Load(path))
            .Message.ShouldBe($"{path}: it holds a list, not a state_dict (a dict of tensors); save model.state_dict()");
    }

    [Fact]
    public void Zip_archive_that_is_not_from_torch_save_is_refused()
    {
        var path = System.IO.Path.Combine(_folder, "other.pt");
        using (var zip = new System.IO.Compression.ZipArchive(File.Create(path), System.IO.Compression.ZipArchiveMode.Create))
        {
            zip.CreateEntry("readme.txt");
        }

        Should.Throw<WeightsFileException>(() => StateDictFile.Load(path)).Message.ShouldContain("has no <name>/data.pkl");
    }

    [Fact]
    public void Missing_file_is_a_weights_file_error()
    {
        var path = System.IO.Path.Combine(_folder, "absent.pt");

        Should.Throw<WeightsFileException>(() => StateDictFile.Load(path)).Message.ShouldBe($"{path}: the file does not exist");
    }

    [Fact]
    public void View_reaching_past_its_storage_is_refused()
    {
        var path = System.IO.Path.Combine(_folder, "out_of_bounds.pt");
        var pickle = new PickleWriter().Proto(2)
            .Op('}').Unicode("w").FloatTensor("0", count: 6, offset: 2, size: [2, 3], stride: [3, 1]).Op('s').Op('.')
            .ToArray();
        WriteTorchZip(path, pickle, new Dictionary<string, byte[]> { ["0"] = new byte[24] });

        var error = Should.Throw<WeightsFileException>(() => StateDictFile.Load(path));

        error.Message.ShouldBe($"{path}: tensor 'w' of size [2, 3], stride [3, 1] and offset 2 reaches element 7 of a storage of 6");
    }

    [Fact]
    public void Storage_whose_bytes_do_not_match_its_element_count_is_refused()
    {
        var path = System.IO.Path.Combine(_folder, "short_storage.pt");
        var pickle = new PickleWriter().Proto(2)
            .Op('}').Unicode("w").FloatTensor("0", count: 6, offset: 0, size: [6], stride: [1]).Op('s').Op('.')
            .ToArray();
        WriteTorchZip(path, pickle, new Dictionary<string, byte[]> { ["0"] = new byte[20] });

        Should.Throw<WeightsFileException>(() => StateDictFile.Load(path))
            .Message.ShouldBe($"{path}: data/0 has 20 bytes, but the pickle says it holds 6 float32 elements (24 bytes)");
    }

    [Fact]
    public void Storage_missing_from_the_archive_is_refused()
    {
        var path = System.IO.Path.Combine(_folder, "no_storage.pt");
        var pickle = new PickleWriter().Proto(2)
            .Op('}').Unicode("w").FloatTensor("7", count: 1, offset: 0, size: [], stride: []).Op('s').Op('.')
            .ToArray();
        WriteTorchZip(path, pickle);

        Should.Throw<WeightsFileException>(() => StateDictFile.Load(path)).Message.ShouldContain("refers to storage '7', but the archive has no data/7");
    }

    [Fact]
    public void Unsupported_opcode_is_a_clear_error()
    {
        var path = System.IO.Path.Combine(_folder, "ext.pt");
        WriteTorchZip(path, new PickleWriter().Proto(2).Raw(0x82, 0x01).Op('.').ToArray());

        Should.Throw<WeightsFileException>(() => StateDictFile.Load(path)).Message.ShouldContain("pickle opcode 0x82");
    }

    [Fact]
    public void Deeply_nested_tuples_are_refused_instead_of_overflowing_the_stack()
    {
        var path = System.IO.Path.Combine(_folder, "nested.pt");
        var pickle = new PickleWriter().Proto(2).Op(')');
        for (var i = 0; i < 100_000; i++)
        {
            pickle.Raw(0x85); // TUPLE1
        }
        WriteTorchZip(path, pickle.Op('.').ToArray());

        Should.Throw<WeightsFileException>(() => StateDictFile.Load(path)).Message.ShouldContain("nested more than 64 deep");
    }

    [Fact]
    public void List_that_contains_itself_is_skipped_without_hanging()
    {
        var path = System.IO.Path.Combine(_folder, "cycle.pt");
        var pickle = new PickleWriter().Proto(2)
            .Op('}')
            .Unicode("loop").Op(']').Op('q').Raw(0).Op('h').Raw(0).Op('a').Op('s') // loop = []; loop.append(loop)
            .Unicode("w").FloatTensor("0", count: 1, offset: 0, size: [], stride: []).Op('s')
            .Op('.')
            .ToArray();
        WriteTorchZip(path, pickle, new Dictionary<string, byte[]> { ["0"] = BitConverter.GetBytes(1.5f) });

        using var weights = StateDictFile.Load(path);

        weights.Keys.ShouldBe(["w"]);
        weights["w"].item<float>().ShouldBe(1.5f);
        weights.Notes.ShouldContain("Skipped 1 entry that is not a tensor: loop.");
    }

    [Fact]
    public void TorchSharp_module_save_format_loads_bit_for_bit()
    {
        using var module = torchvision.models.resnet18(num_classes: 10);
        var path = System.IO.Path.Combine(_folder, "resnet18.dat");
        module.save(path);

        using var weights = StateDictFile.Load(path);

        weights.Format.ShouldBe(WeightsFormat.TorchSharp);
        ShouldBeBitwiseEqual(weights, module.state_dict());
    }

    [Theory]
    [InlineData(1)]
    [InlineData(20)]
    [InlineData(-1)]
    public void Truncated_torchsharp_file_is_refused_naming_the_file(int keep)
    {
        using var module = new TinyConvNet();
        var path = System.IO.Path.Combine(_folder, "tiny.dat");
        module.save(path);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..(keep >= 0 ? keep : bytes.Length + keep)]);

        var error = Should.Throw<WeightsFileException>(() => StateDictFile.Load(path));

        error.Message.ShouldStartWith(path + ": not a weights file we can read");
        error.Message.ShouldContain("truncated");
    }

    [Fact]
    public void Resnet18_saved_as_safetensors_loads_back_bit_for_bit()
    {
        using var module = torchvision.models.resnet18();
        RunTrainingForward(module);
        var path = System.IO.Path.Combine(_folder, "resnet18.safetensors");

        StateDictFile.SaveSafetensors(path, module, new Dictionary<string, string> { ["arch"] = "resnet18" });
        using var weights = StateDictFile.Load(path);

        weights.Format.ShouldBe(WeightsFormat.Safetensors);
        weights.Metadata["arch"].ShouldBe("resnet18");
        ShouldBeBitwiseEqual(weights, module.state_dict());

        using var fresh = torchvision.models.resnet18();
        var report = WeightsLoader.Apply(fresh, weights);
        report.IsExactMatch.ShouldBeTrue();
        report.Loaded.ShouldBe(module.state_dict().Count);
        ShouldBeBitwiseEqual(fresh.state_dict(), module.state_dict());
    }

    [Fact]
    public void Saving_replaces_the_file_atomically_and_leaves_no_temporary_file()
    {
        var path = System.IO.Path.Combine(_folder, "nested", "tiny.safetensors");
        using var first = new TinyConvNet();
        using var second = new TinyConvNet();

        StateDictFile.SaveSafetensors(path, first);
        StateDictFile.SaveSafetensors(path, second);

        Directory.GetFiles(System.IO.Path.GetDirectoryName(path)!).ShouldBe([path]);
        using var weights = StateDictFile.Load(path);
        ShouldBeBitwiseEqual(weights, second.state_dict());
    }

    [Fact]
    public void Saving_a_dtype_safetensors_cannot_hold_fails_before_touching_the_file()
    {
        var path = System.IO.Path.Combine(_folder, "complex.safetensors");
        File.WriteAllText(path, "old");
        using var complex = zeros([2], ScalarType.ComplexFloat32);

        Should.Throw<ArgumentException>(() => StateDictFile.SaveSafetensors(path, new Dictionary<string, Tensor> { ["z"] = complex }));

        File.ReadAllText(path).ShouldBe("old");
        Directory.GetFiles(_folder).ShouldBe([path]);
    }

    // Training-mode forward passes move BatchNorm's running statistics away from their initial 0 and 1, so a
    // round trip that dropped buffers would show.
    private static void RunTrainingForward(nn.Module<Tensor, Tensor> module)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        module.train();
        module.call(randn(2, 3, 32, 32, generator: new Generator(11)));
    }

    private string Truncated(string fixture, int keep)
    {
        var bytes = File.ReadAllBytes(WeightFixtures.Path(fixture));
        var path = System.IO.Path.Combine(_folder, "truncated-" + fixture);
        File.WriteAllBytes(path, bytes[..(keep >= 0 ? keep : bytes.Length + keep)]);
        return path;
    }

    private const string Token = "API_TOKEN=s3cr3t-7f2b9c4e1d";

    private const string Secret =
        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n" + Token + "\n";

    public static TheoryData<string, byte[]> FilesThatAreNotWeights()
    {
        // As long as a real /etc/passwd, so that a reader taking its first bytes for an entry count gets past that check.
        byte[] text = System.Text.Encoding.UTF8.GetBytes(Secret + string.Concat(Enumerable.Range(1000, 40).Select(i => $"user{i}:x:{i}:{i}::/home/user{i}:/bin/sh\n")));
        // Bytes that parse as TorchSharp's format up to a key: one entry, its key the secret's first line, then a dtype code
        // that no weights use. The reader gets as far as the key, so it is the case where echoing it would leak.
        byte[] key = System.Text.Encoding.UTF8.GetBytes(Token);
        byte[] keyed = [1, (byte)key.Length, .. key, 99, 0];
        return new TheoryData<string, byte[]>
        {
            { "passwd.pt", text }, { "passwd.safetensors", text }, { "passwd.bin", text }, { "passwd", text },
            { "keyed.dat", keyed },
        };
    }

    [Theory]
    [MemberData(nameof(FilesThatAreNotWeights))]
    public void A_file_that_is_not_weights_is_named_in_the_error_but_none_of_its_bytes_are(string name, byte[] bytes)
    {
        var path = System.IO.Path.Combine(_folder, name);
        File.WriteAllBytes(path, bytes);

        var error = Should.Throw<WeightsFileException>(() => StateDictFile.Load(path));

        error.Message.ShouldStartWith(path + ": ");
        string printed = error.Message.Replace(path, "", StringComparison.Ordinal);
        // No run of eight characters of the file appears: not a line, not a key, not a token.
        string content = System.Text.Encoding.UTF8.GetString(bytes);
        for (int start = 0; start + 8 <= content.Length; start++)
        {
            string run = content.Substring(start, 8);
            if (!run.Contains('\n') && !run.Contains('\0'))
            {
                printed.ShouldNotContain(run, Case.Sensitive, $"the error repeats the file's bytes: {printed}");
            }
        }
    }

    private static void ShouldEqualExpected(IReadOnlyDictionary<string, Tensor> weights, Dictionary<string, ExpectedTensor> expected)
    {
        weights.Keys.ShouldBe(expected.Keys, ignoreOrder: true);
        foreach (var (key, tensor) in expected)
        {
            var actual = weights[key];
            PythonName(actual.dtype).ShouldBe(tensor.Dtype, key);
            actual.shape.ShouldBe(tensor.Shape, key);
            Bytes(actual).ShouldBe(tensor.Bytes, key);
        }
    }

    private static void ShouldBeBitwiseEqual(IReadOnlyDictionary<string, Tensor> actual, IReadOnlyDictionary<string, Tensor> expected)
    {
        actual.Keys.ShouldBe(expected.Keys, ignoreOrder: true);
        foreach (var (key, tensor) in expected)
        {
            actual[key].dtype.ShouldBe(tensor.dtype, key);
            actual[key].shape.ShouldBe(tensor.shape, key);
            // SequenceEqual, not ShouldBe: some of these are megabytes, and a diff of bytes helps nobody.
            Bytes(actual[key]).AsSpan().SequenceEqual(Bytes(tensor)).ShouldBeTrue(key);
        }
    }
}
