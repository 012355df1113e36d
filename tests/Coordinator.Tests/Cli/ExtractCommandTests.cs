using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Cluster.GpuWorker.Extraction;
using Cluster.Storage.Database;
using Cluster.Storage.Files;
using Shouldly;
using SkiaSharp;

namespace Cluster.Coordinator.Tests.Cli;

/// <summary>`coordinator extract` with --input-size and --storage-dtype, embedded (no servers), and `features export` of what it made.</summary>
[Collection(nameof(ConsoleCollection))]
public sealed class ExtractCommandTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("extract-command-tests-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Theory]
    [InlineData("--input-size", "8", "--input-size 8 must be within 16..1024.")]
    [InlineData("--input-size", "4096", "--input-size 4096 must be within 16..1024.")]
    [InlineData("--storage-dtype", "int8", "--storage-dtype 'int8' is not one of: fp32, bf16, fp16.")]
    public async Task A_bad_input_size_or_storage_dtype_is_one_line_and_exit_code_2(string option, string value, string message)
    {
        (int exitCode, string _, string error) = await InProcessCli.RunAsync("extract", "--dataset", _folder, option, value);

        exitCode.ShouldBe(2);
        string[] lines = error.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        lines.ShouldHaveSingleItem().ShouldContain(message);
    }

    [Fact]
    public async Task An_input_size_the_network_shrinks_to_nothing_is_one_line_and_exit_code_2()
    {
        string images = Path.Combine(_folder, "images", "a");
        Directory.CreateDirectory(images);

        (int exitCode, string _, string error) = await InProcessCli.RunAsync("extract", "--embedded", "--storage", Path.Combine(_folder, "storage"),
            "--dataset", Path.GetDirectoryName(images)!, "--model", "alexnet", "--input-size", "16");

        exitCode.ShouldBe(2, error);
        error.Split('\n', StringSplitOptions.RemoveEmptyEntries).ShouldHaveSingleItem().ShouldContain("--input-size 16 is too small for alexnet: ");
    }

    [Fact]
    public async Task Resnet18_imagenet_at_64_stored_in_bf16_is_recorded_as_such_and_exports_as_float32()
    {
        string images = Path.Combine(_folder, "images");
        foreach (string label in new[] { "a", "b" })
        {
            Directory.CreateDirectory(Path.Combine(images, label));
            for (int i = 0; i < 2; i++)
            {
                using var bitmap = new SKBitmap(40 + (10 * i), 30);
                bitmap.Erase(new SKColor((byte)(label[0] * 3), (byte)(i * 90), 128));
                using SKData png = bitmap.Encode(SKEncodedImageFormat.Png, 100);
                await File.WriteAllBytesAsync(Path.Combine(images, label, $"{i}.png"), png.ToArray());
            }
        }
        string storage = Path.Combine(_folder, "storage");

        (int exitCode, string output, string error) = await InProcessCli.RunAsync("extract", "--embedded", "--storage", storage, "--dataset", images,
            "--input-size", "64", "--storage-dtype", "bf16", "--format", "json");

        exitCode.ShouldBe(0, error);
        using JsonDocument result = JsonDocument.Parse(output);
        string key = result.RootElement.GetProperty("key").GetString()!;
        result.RootElement.GetProperty("dtype").GetString().ShouldBe("bfloat16");
        result.RootElement.GetProperty("inputSize").GetInt32().ShouldBe(64);
        result.RootElement.GetProperty("preprocessing").GetString()!.ShouldEndWith("-64");
        using (JsonDocument manifest = JsonDocument.Parse(await File.ReadAllBytesAsync(Path.Combine(storage, "features", key, "manifest.json"))))
        {
            manifest.RootElement.GetProperty("dtype").GetString().ShouldBe("bfloat16");
            manifest.RootElement.GetProperty("inputSize").GetInt32().ShouldBe(64);
        }

        string npy = Path.Combine(_folder, "features.npy");
        (int exportCode, string _, string exportError) = await InProcessCli.RunAsync("features", "export", key, "--npy", npy, "--embedded", "--storage", storage);

        exportCode.ShouldBe(0, exportError);
        (string header, float[] exported) = ReadNpy(npy);
        header.ShouldContain("'descr': '<f4'");
        header.ShouldContain("'shape': (4, 512)");
        var databases = new ClusterDbContextFactory(DatabaseProvider.Sqlite, $"Data Source={Path.Combine(storage, "cluster.db")};Pooling=False");
        using CachedFeatures cached = await FeatureSetReader.LoadAsync(databases, new FileStore(storage), key, CancellationToken.None);
        cached.Dtype.ShouldBe(TorchSharp.torch.ScalarType.BFloat16);
        using TorchSharp.torch.Tensor widened = cached.Take([0, 1, 2, 3]);
        exported.ShouldBe(widened.data<float>().ToArray(), "export widens the stored bf16 values exactly");
    }

    private static (string Header, float[] Values) ReadNpy(string path)
    {
        byte[] bytes = File.ReadAllBytes(path);
        int headerLength = BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(8));
        string header = Encoding.ASCII.GetString(bytes, 10, headerLength);
        float[] values = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes.AsSpan(10 + headerLength)).ToArray();
        return (header, values);
    }
}
