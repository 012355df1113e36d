using System.IO.Compression;
using Cluster.Coordinator.Datasets;
using Cluster.Storage.Datasets;
using Cluster.TestSupport;
using Shouldly;
using SkiaSharp;

namespace Cluster.Coordinator.Tests.Datasets;

public sealed class IdxImporterTests : IDisposable
{
    private const string FashionMnist = "/usr/share/datasets/fashion-mnist";
    private const string InstallFashionMnist = "apt-get install dataset-fashion-mnist";

    private readonly string _folder = Directory.CreateTempSubdirectory("idx-importer-tests-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Each_image_becomes_a_grayscale_png_in_its_class_folder_named_by_its_index(bool gzip)
    {
        var (images, labels) = IdxFiles.WriteTiny(_folder, gzip);
        var output = Path.Combine(_folder, "out");

        var result = await IdxImporter.ImportAsync(images, labels, output, null, null, CancellationToken.None);

        result.Images.ShouldBe(5);
        (result.Rows, result.Columns).ShouldBe((2, 3));
        result.Classes.ShouldBe([new ImportedClass(0, "0", 2), new ImportedClass(1, "1", 2), new ImportedClass(2, "2", 1)]);
        Files(output).ShouldBe(["0/00001.png", "0/00004.png", "1/00000.png", "1/00002.png", "2/00003.png"]);
        for (var index = 0; index < 5; index++)
        {
            var path = Path.Combine(output, IdxFiles.TinyLabels[index].ToString(System.Globalization.CultureInfo.InvariantCulture), $"{index:D5}.png");
            GrayPixels(path, 3, 2).ShouldBe(IdxFiles.TinyPixels(index));
        }
    }

    [Fact]
    public async Task A_limit_imports_only_the_first_images_and_fashion_names_name_the_folders()
    {
        var (images, labels) = IdxFiles.WriteTiny(_folder, gzip: true);
        var output = Path.Combine(_folder, "out");

        var result = await IdxImporter.ImportAsync(images, labels, output, new IdxImportOptions(IdxClassNames.FashionMnist, Limit: 3), null, CancellationToken.None);

        result.Images.ShouldBe(3);
        result.Classes.ShouldBe([new ImportedClass(0, "T-shirt_top", 1), new ImportedClass(1, "Trouser", 2)]);
        Files(output).ShouldBe(["T-shirt_top/00001.png", "Trouser/00000.png", "Trouser/00002.png"]);
    }

    [Fact]
    public async Task The_imported_tree_scans_as_a_dataset()
    {
        var (images, labels) = IdxFiles.WriteTiny(_folder, gzip: false);
        var output = Path.Combine(_folder, "out");
        await IdxImporter.ImportAsync(images, labels, output, null, null, CancellationToken.None);

        var manifest = await DatasetScanner.ScanFolderAsync(output, null, CancellationToken.None);

        manifest.Entries.Count.ShouldBe(5);
        manifest.Skipped.ShouldBeEmpty();
        manifest.Classes.Select(c => (c.Name, c.Images)).ShouldBe([("0", 2), ("1", 2), ("2", 1)]);
    }

    [Fact]
    public async Task Bad_input_is_one_clear_error_naming_the_file()
    {
        var (images, labels) = IdxFiles.WriteTiny(_folder, gzip: false);
        var imageBytes = File.ReadAllBytes(images);
        var truncated = IdxFiles.Write(_folder, "truncated-images", imageBytes[..^4]);
        var trailing = IdxFiles.Write(_folder, "trailing-images", [.. imageBytes, 0]);
        var fewerLabels = IdxFiles.Write(_folder, "fewer-labels", IdxFiles.Idx(0x801, [4], IdxFiles.TinyLabels[..4]));
        var badGzip = IdxFiles.Write(_folder, "bad.gz", [0x1F, 0x8B, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        var text = IdxFiles.Write(_folder, "notes.txt", "hello, not an IDX file"u8.ToArray());
        var output = Path.Combine(_folder, "out");

        async Task<string> Error(string imagesFile, string labelsFile, IdxImportOptions? options = null, string? outputDirectory = null) =>
            (await Should.ThrowAsync<DatasetInputException>(() =>
                IdxImporter.ImportAsync(imagesFile, labelsFile, outputDirectory ?? output, options, null, CancellationToken.None))).Message;

        (await Error(Path.Combine(_folder, "missing.gz"), labels)).ShouldContain("missing.gz' does not exist");
        (await Error(labels, labels)).ShouldBe($"'{labels}' is not an IDX image file: its magic number is 0x00000801, expected 0x00000803 (unsigned bytes in 3 dimensions: count, rows, columns).");
        (await Error(text, labels)).ShouldContain($"'{text}' is not an IDX image file");
        (await Error(truncated, labels)).ShouldContain($"'{truncated}' is truncated");
        (await Error(trailing, labels)).ShouldContain($"'{trailing}' has data after");
        (await Error(images, fewerLabels)).ShouldBe($"'{images}' holds 5 images but '{fewerLabels}' holds 4 labels; they must be a matching pair.");
        (await Error(badGzip, labels)).ShouldContain($"'{badGzip}' looks gzip-compressed but is not valid gzip");
        var manyLabels = IdxFiles.Write(_folder, "many-labels", IdxFiles.Idx(0x801, [5], [1, 0, 11, 2, 0]));
        (await Error(images, manyLabels, new IdxImportOptions(IdxClassNames.FashionMnist))).ShouldContain("label 11 of image 2 is not one of the 10 Fashion-MNIST classes");
        Directory.CreateDirectory(Path.Combine(_folder, "full", "something"));
        (await Error(images, labels, outputDirectory: Path.Combine(_folder, "full"))).ShouldContain("is not empty");
        Directory.Exists(output).ShouldBeFalse("nothing is written when the input is bad");
    }

    [FactWhenFileExists(FashionMnist + "/t10k-images-idx3-ubyte.gz", InstallFashionMnist)]
    public async Task The_first_hundred_fashion_mnist_test_images_import_with_their_classes_and_pixels()
    {
        var images = Path.Combine(FashionMnist, "t10k-images-idx3-ubyte.gz");
        var labels = Path.Combine(FashionMnist, "t10k-labels-idx1-ubyte.gz");
        var output = Path.Combine(_folder, "fashion");
        var reported = new List<IdxImportProgress>();

        var result = await IdxImporter.ImportAsync(images, labels, output, new IdxImportOptions(IdxClassNames.FashionMnist, Limit: 100), new Progress(reported), CancellationToken.None);

        // Read independently of the importer: the raw bytes behind the two gzip files.
        var labelBytes = Gunzip(labels)[8..108];
        var imageBytes = Gunzip(images);
        result.Images.ShouldBe(100);
        (result.Rows, result.Columns).ShouldBe((28, 28));
        foreach (var imported in result.Classes)
        {
            imported.Name.ShouldBe(IdxImporter.FashionMnistClasses[imported.Label]);
            imported.Images.ShouldBe(labelBytes.Count(l => l == imported.Label));
            Directory.GetFiles(Path.Combine(output, imported.Name)).Length.ShouldBe(imported.Images);
        }

        result.Classes.Sum(c => c.Images).ShouldBe(100);
        var seventh = Path.Combine(output, IdxImporter.FashionMnistClasses[labelBytes[7]], "00007.png");
        GrayPixels(seventh, 28, 28).ShouldBe(imageBytes.AsSpan(16 + (7 * 784), 784).ToArray());
        reported.ShouldContain(new IdxImportProgress(100, 100));
    }

    private static byte[] Gunzip(string path)
    {
        using var gzip = new GZipStream(File.OpenRead(path), CompressionMode.Decompress);
        using var memory = new MemoryStream();
        gzip.CopyTo(memory);
        return memory.ToArray();
    }

    private static List<string> Files(string root) =>
        Directory.GetFiles(root, "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(root, f).Replace('\\', '/'))
            .Order(StringComparer.Ordinal)
            .ToList();

    private static byte[] GrayPixels(string png, int width, int height)
    {
        using var codec = SKCodec.Create(png);
        (codec.Info.Width, codec.Info.Height).ShouldBe((width, height));
        var pixels = new byte[width * height];
        var handle = System.Runtime.InteropServices.GCHandle.Alloc(pixels, System.Runtime.InteropServices.GCHandleType.Pinned);
        try
        {
            codec.GetPixels(new SKImageInfo(width, height, SKColorType.Gray8, SKAlphaType.Opaque), handle.AddrOfPinnedObject()).ShouldBe(SKCodecResult.Success);
        }
        finally
        {
            handle.Free();
        }

        return pixels;
    }

    /// <summary>Records reports synchronously (System.Progress would post them to the thread pool, after the import returns).</summary>
    private sealed class Progress(List<IdxImportProgress> reported) : IProgress<IdxImportProgress>
    {
        public void Report(IdxImportProgress value)
        {
            lock (reported)
            {
                reported.Add(value);
            }
        }
    }
}
