using System.Runtime.Versioning;
using System.Security.Cryptography;
using System.Text;
using Cluster.Storage.Datasets;
using Cluster.Storage.Files;
using Cluster.TestSupport;
using Shouldly;

namespace Cluster.Storage.Tests.Datasets;

// Symlinks, FIFOs and Unix file modes: the cluster runs on Linux.
[UnsupportedOSPlatform("windows")]
public sealed class DatasetScannerTests : IDisposable
{
    private readonly string _folder;
    private readonly string _root;
    private readonly string _outside;

    public DatasetScannerTests()
    {
        _folder = Path.Combine(Path.GetTempPath(), "dataset-scanner-tests-" + Guid.NewGuid().ToString("N"));
        _root = Path.Combine(_folder, "train");
        _outside = Path.Combine(_folder, "elsewhere");
        Directory.CreateDirectory(_root);
        Directory.CreateDirectory(_outside);
    }

    public void Dispose()
    {
        // Restore permissions first: a chmod 000 file would otherwise survive the recursive delete as non-root.
        foreach (var file in Directory.EnumerateFiles(_folder, "*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.ReparsePoint }))
        {
            File.SetUnixFileMode(file, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        }

        // Recursive delete removes symlinks without following them, so links to _outside are safe here.
        Directory.Delete(_folder, recursive: true);
    }

    [Fact]
    public async Task Image_folder_scan_lists_each_image_with_its_class_size_and_sha256()
    {
        var cat = Write("cats/cat.1.jpg", "cat one");
        Write("cats/cat.2.png", "cat two!");
        var dog = Write("dogs/nested/dog.1.JPG", "dog");

        var manifest = await DatasetScanner.ScanFolderAsync(_root, null, CancellationToken.None);

        manifest.Entries.Select(e => (e.Path, e.Label)).ShouldBe(
        [
            ("cats/cat.1.jpg", "cats"),
            ("cats/cat.2.png", "cats"),
            ("dogs/nested/dog.1.JPG", "dogs"),
        ]);
        manifest.Entries[0].Bytes.ShouldBe(7);
        manifest.Entries[0].Sha256.ShouldBe(Sha256Of(cat));
        manifest.Entries[2].Sha256.ShouldBe(Sha256Of(dog));
        manifest.Classes.ShouldBe([new DatasetClass("cats", 0, 2), new DatasetClass("dogs", 1, 1)]);
        manifest.Skipped.ShouldBeEmpty();
        manifest.Root.ShouldBe(Path.GetFullPath(_root));
        manifest.Id.Length.ShouldBe(16);
        manifest.ContentSha256.ShouldStartWith(manifest.Id);
    }

    [Fact]
    public async Task Entries_are_sorted_by_label_then_path_in_ordinal_order()
    {
        foreach (var name in new[] { "b/a.jpg", "a/b10.jpg", "a/b2.jpg", "a/B.jpg", "a/a.jpg", "C/z.jpg" })
        {
            Write(name, name);
        }

        var manifest = await DatasetScanner.ScanFolderAsync(_root, new DatasetScanOptions(Parallelism: 3), CancellationToken.None);

        manifest.Entries.Select(e => e.Path).ShouldBe(["C/z.jpg", "a/B.jpg", "a/a.jpg", "a/b10.jpg", "a/b2.jpg", "b/a.jpg"]);
        manifest.Classes.Select(c => c.Name).ShouldBe(["C", "a", "b"]);
    }

    [Fact]
    public async Task The_same_files_give_the_same_id_wherever_they_are_and_any_change_gives_another()
    {
        Write("cats/1.jpg", "one");
        Write("dogs/2.jpg", "two");
        var copy = Path.Combine(_folder, "copy");
        Directory.CreateDirectory(Path.Combine(copy, "cats"));
        Directory.CreateDirectory(Path.Combine(copy, "dogs"));
        File.WriteAllText(Path.Combine(copy, "cats", "1.jpg"), "one");
        File.WriteAllText(Path.Combine(copy, "dogs", "2.jpg"), "two");

        var first = await DatasetScanner.ScanFolderAsync(_root, new DatasetScanOptions(Parallelism: 1), CancellationToken.None);
        var second = await DatasetScanner.ScanFolderAsync(copy, new DatasetScanOptions(Parallelism: 4), CancellationToken.None);
        File.WriteAllText(Path.Combine(copy, "dogs", "2.jpg"), "twO");
        var changed = await DatasetScanner.ScanFolderAsync(copy, null, CancellationToken.None);

        second.Id.ShouldBe(first.Id);
        changed.Id.ShouldNotBe(first.Id);
    }

    [Fact]
    public async Task Hostile_entries_are_skipped_each_with_its_reason_and_good_ones_are_kept()
    {
        Write("cats/good.jpg", "good");
        Write("cats/empty.jpg", "");
        Write("cats/notes.txt", "not an image");
        Write("cats/scan.tiff", "II*\0");
        Write("stray.jpg", "beside the class folders");
        Directory.CreateDirectory(Path.Combine(_root, "birds"));
        File.WriteAllText(Path.Combine(_outside, "secret.jpg"), "secret");
        Directory.CreateDirectory(Path.Combine(_outside, "more-cats"));
        File.WriteAllText(Path.Combine(_outside, "more-cats", "x.jpg"), "x");
        File.CreateSymbolicLink(Path.Combine(_root, "cats", "escape.jpg"), Path.Combine(_outside, "secret.jpg"));
        File.CreateSymbolicLink(Path.Combine(_root, "cats", "sneaky.jpg"), "../../elsewhere/secret.jpg");
        File.CreateSymbolicLink(Path.Combine(_root, "cats", "dangling.jpg"), Path.Combine(_root, "cats", "gone.jpg"));
        File.CreateSymbolicLink(Path.Combine(_root, "cats", "alias.jpg"), "good.jpg");
        Directory.CreateSymbolicLink(Path.Combine(_root, "lions"), Path.Combine(_outside, "more-cats"));
        Directory.CreateSymbolicLink(Path.Combine(_root, "cats", "again"), Path.Combine(_root, "cats"));
        Write("cats/new\nline.jpg", "newline");
        MakeFifo(Path.Combine(_root, "cats", "pipe.jpg"));

        var scan = DatasetScanner.ScanFolderAsync(_root, null, CancellationToken.None);

        // A FIFO must not hang the scan: opening one blocks until a writer comes.
        (await Task.WhenAny(scan, Task.Delay(TimeSpan.FromSeconds(30)))).ShouldBe(scan, "the scan hung");
        var manifest = await scan;
        manifest.Entries.Select(e => e.Path).ShouldBe(["cats/alias.jpg", "cats/good.jpg"]);
        var reasons = manifest.Skipped.ToDictionary(s => s.Path, s => s.Reason);
        reasons.ShouldBe(new Dictionary<string, ImageSkipReason>
        {
            ["birds"] = ImageSkipReason.Unlabelled,
            ["cats/again"] = ImageSkipReason.Duplicate,
            ["cats/dangling.jpg"] = ImageSkipReason.Missing,
            ["cats/empty.jpg"] = ImageSkipReason.Empty,
            ["cats/escape.jpg"] = ImageSkipReason.OutsideRoot,
            ["cats/new\nline.jpg"] = ImageSkipReason.InvalidName,
            ["cats/notes.txt"] = ImageSkipReason.NotAnImage,
            ["cats/pipe.jpg"] = ImageSkipReason.Empty,
            ["cats/scan.tiff"] = ImageSkipReason.UnsupportedFormat,
            ["cats/sneaky.jpg"] = ImageSkipReason.OutsideRoot,
            ["lions"] = ImageSkipReason.OutsideRoot,
            ["stray.jpg"] = ImageSkipReason.Unlabelled,
        });
        manifest.Skipped.ShouldAllBe(s => s.Message.Length > 0);
        manifest.Classes.Select(c => c.Name).ShouldBe(["cats"]);
    }

    [UnprivilegedFact]
    public async Task An_unreadable_file_is_skipped_as_unreadable()
    {
        Write("cats/good.jpg", "good");
        var locked = Write("cats/locked.jpg", "locked");
        File.SetUnixFileMode(locked, UnixFileMode.None);

        var manifest = await DatasetScanner.ScanFolderAsync(_root, null, CancellationToken.None);

        manifest.Entries.Select(e => e.Path).ShouldBe(["cats/good.jpg"]);
        manifest.Skipped.ShouldHaveSingleItem().Reason.ShouldBe(ImageSkipReason.Unreadable);
    }

    [Fact]
    public async Task A_user_manifest_lists_images_by_path_and_label_and_refuses_what_it_cannot_use()
    {
        Write("img/1.jpg", "one");
        Write("img/2.png", "two");
        Write("img/3", "no extension: the decoder judges the content");
        Directory.CreateDirectory(Path.Combine(_root, "img", "folder.jpg"));
        File.WriteAllText(Path.Combine(_outside, "secret.jpg"), "secret");
        var list = Path.Combine(_root, "list.tsv");
        File.WriteAllText(list, string.Join('\n',
            "path\tlabel",
            "# comments and blank lines are ignored",
            "",
            "img/1.jpg\tcat",
            $"{Path.Combine(_root, "img", "2.png")}\tdog",
            "img/3\tdog",
            "./img/1.jpg\tdog",
            "../elsewhere/secret.jpg\tcat",
            "img/missing.jpg\tcat",
            "img/folder.jpg\tcat",
            "img/2.png\t"));

        var manifest = await DatasetScanner.ScanManifestAsync(list, root: null, null, CancellationToken.None);

        manifest.Entries.Select(e => (e.Path, e.Label)).ShouldBe([("img/1.jpg", "cat"), ("img/2.png", "dog"), ("img/3", "dog")]);
        manifest.Skipped.Select(s => (s.Path, s.Reason)).OrderBy(s => s.Path, StringComparer.Ordinal).ShouldBe(
        [
            ("../elsewhere/secret.jpg", ImageSkipReason.OutsideRoot),
            ("img/1.jpg", ImageSkipReason.Duplicate),
            ("img/2.png", ImageSkipReason.Unlabelled),
            ("img/folder.jpg", ImageSkipReason.Unreadable),
            ("img/missing.jpg", ImageSkipReason.Missing),
        ]);
    }

    [Fact]
    public async Task A_malformed_manifest_line_is_one_error_naming_the_file_and_line()
    {
        var list = Path.Combine(_root, "list.tsv");
        File.WriteAllText(list, "a.jpg\tcat\nb.jpg\tdog\textra\n");

        var error = await Should.ThrowAsync<DatasetInputException>(() => DatasetScanner.ScanManifestAsync(list, null, null, CancellationToken.None));

        error.Message.ShouldBe($"{list}:2: expected 'path<TAB>label', found 3 tab-separated field(s).");
    }

    [Fact]
    public async Task A_missing_folder_is_a_dataset_input_error()
    {
        var missing = Path.Combine(_folder, "nope");

        var error = await Should.ThrowAsync<DatasetInputException>(() => DatasetScanner.ScanFolderAsync(missing, null, CancellationToken.None));

        error.Message.ShouldContain(missing);
    }

    [Fact]
    public async Task A_saved_manifest_loads_back_the_same_and_a_changed_one_is_refused()
    {
        Write("cats/1.jpg", "one");
        Write("dogs/2.jpg", "two");
        Write("dogs/notes\tx.txt", "skipped, with a tab in its name");
        var store = new FileStore(Path.Combine(_folder, "storage"));
        var manifest = await DatasetScanner.ScanFolderAsync(_root, null, CancellationToken.None);

        await manifest.SaveAsync(store, CancellationToken.None);
        var loaded = await DatasetManifest.LoadAsync(store, manifest.Id, CancellationToken.None);

        loaded.Id.ShouldBe(manifest.Id);
        loaded.Entries.ShouldBe(manifest.Entries);
        loaded.Classes.ShouldBe(manifest.Classes);
        loaded.Root.ShouldBe(manifest.Root);
        loaded.Skipped.ShouldHaveSingleItem().Path.ShouldBe("dogs/notes\\u0009x.txt");
        var text = File.ReadAllText(store.Resolve($"datasets/{manifest.Id}/manifest.tsv"));
        text.ShouldBe(
            "path\tlabel\tbytes\tsha256\n"
            + $"cats/1.jpg\tcats\t3\t{Sha256Of(Path.Combine(_root, "cats", "1.jpg"))}\n"
            + $"dogs/2.jpg\tdogs\t3\t{Sha256Of(Path.Combine(_root, "dogs", "2.jpg"))}\n");
        Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text))).ShouldBe(manifest.ContentSha256);

        File.WriteAllText(store.Resolve($"datasets/{manifest.Id}/manifest.tsv"), text.Replace("dogs\t3", "cats\t3", StringComparison.Ordinal));
        var error = await Should.ThrowAsync<DatasetInputException>(() => DatasetManifest.LoadAsync(store, manifest.Id, CancellationToken.None));
        error.Message.ShouldContain("changed after it was written");
    }

    [Fact]
    public void Skip_reason_codes_are_stable()
    {
        // These strings are stored (skipped.tsv, skipped_images.reason): renaming one breaks what is on disk.
        Enum.GetValues<ImageSkipReason>().Select(r => ((int)r, r.Code())).ShouldBe(
        [
            (1, "empty"), (2, "truncated"), (3, "not-an-image"), (4, "unsupported-format"), (5, "too-large"), (6, "corrupt"),
            (7, "unreadable"), (8, "missing"), (9, "outside-root"), (10, "invalid-name"), (11, "duplicate"), (12, "unlabelled"),
        ]);
        foreach (var reason in Enum.GetValues<ImageSkipReason>())
        {
            ImageSkipReasons.TryParse(reason.Code(), out var parsed).ShouldBeTrue();
            parsed.ShouldBe(reason);
        }
    }

    private string Write(string relativePath, string content)
    {
        var path = Path.Combine(_root, relativePath);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, content);
        return path;
    }

    private static string Sha256Of(string path) => Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(path)));

    private static void MakeFifo(string path)
    {
        using var mkfifo = System.Diagnostics.Process.Start("mkfifo", [path]);
        mkfifo.WaitForExit();
        mkfifo.ExitCode.ShouldBe(0, $"mkfifo {path}");
    }
}
