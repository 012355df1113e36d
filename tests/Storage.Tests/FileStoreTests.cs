using System.Security.Cryptography;
using System.Text;
using Cluster.Storage.Files;
using Shouldly;

namespace Cluster.Storage.Tests;

public sealed class FileStoreTests : IDisposable
{
    private readonly string _folder;
    private readonly string _rootPath;
    private readonly string _outside;
    private readonly FileStore _store;

    public FileStoreTests()
    {
        _folder = Path.Combine(Path.GetTempPath(), "filestore-tests-" + Guid.NewGuid().ToString("N"));
        _rootPath = Path.Combine(_folder, "root");
        _outside = Path.Combine(_folder, "elsewhere");
        Directory.CreateDirectory(_outside);
        File.WriteAllText(Path.Combine(_outside, "secret.txt"), "secret");
        _store = new FileStore(_rootPath);
    }

    public void Dispose()
    {
        // Recursive delete removes symlinks without following them, so links to _outside are safe here.
        if (Directory.Exists(_folder))
        {
            Directory.Delete(_folder, recursive: true);
        }
    }

    [Fact]
    public void Constructor_creates_a_missing_root()
    {
        Directory.Exists(_rootPath).ShouldBeTrue();
        _store.Root.ShouldBe(Path.GetFullPath(_rootPath));
    }

    [Fact]
    public void Root_given_through_a_symlink_is_resolved_to_the_real_folder()
    {
        var link = Path.Combine(_folder, "root-link");
        Directory.CreateSymbolicLink(link, _rootPath);

        var store = new FileStore(link);

        store.Root.ShouldBe(_store.Root);
        store.Resolve("a/b.txt").ShouldBe(Path.Combine(_store.Root, "a", "b.txt"));
    }

    [Fact]
    public void Relative_paths_resolve_under_the_root()
    {
        _store.Resolve("features/key/shard-00000.safetensors")
            .ShouldBe(Path.Combine(_store.Root, "features", "key", "shard-00000.safetensors"));
        _store.Resolve("./a//b/").ShouldBe(Path.Combine(_store.Root, "a", "b"));
    }

    [Theory]
    [InlineData("..")]
    [InlineData("../x")]
    [InlineData("a/..")]
    [InlineData("a/../b")]
    [InlineData("a/../../etc/passwd")]
    public void Dot_dot_segments_are_refused(string path)
    {
        var error = Should.Throw<StoragePathException>(() => _store.Resolve(path));
        error.Path.ShouldBe(path);
        error.Message.ShouldContain("..");
    }

    [Theory]
    [InlineData("/etc/passwd")]
    [InlineData("/")]
    [InlineData("C:\\x")]
    [InlineData("C:/x")]
    [InlineData("c:x")]
    [InlineData("\\\\server\\x")]
    [InlineData("\\x")]
    public void Absolute_paths_are_refused(string path)
    {
        Should.Throw<StoragePathException>(() => _store.Resolve(path)).Message.ShouldContain("absolute");
    }

    [Theory]
    [InlineData("")]
    [InlineData(".")]
    [InlineData("./")]
    public void Empty_paths_and_the_root_itself_are_refused(string path)
    {
        Should.Throw<StoragePathException>(() => _store.Resolve(path));
    }

    [Theory]
    [InlineData("a\0b")]
    [InlineData("a\nb")]
    [InlineData("a\tb")]
    [InlineData("a\u007fb")]
    [InlineData("\u001b[31m")]
    public void Control_characters_are_refused(string path)
    {
        Should.Throw<StoragePathException>(() => _store.Resolve(path)).Message.ShouldContain("control character");
    }

    [Fact]
    public void Backslashes_are_refused()
    {
        Should.Throw<StoragePathException>(() => _store.Resolve("features\\key")).Message.ShouldContain("backslash");
    }

    [Fact]
    public void Refusal_message_is_one_line_naming_the_offending_path()
    {
        var error = Should.Throw<StoragePathException>(() => _store.Resolve("bad\nname"));

        error.Path.ShouldBe("bad\nname");
        error.Message.ShouldNotContain("\n");
        error.Message.ShouldContain("'bad\\u000aname'");
    }

    [Fact]
    public async Task Symlink_pointing_outside_the_root_is_refused()
    {
        File.CreateSymbolicLink(Path.Combine(_rootPath, "passwd"), Path.Combine(_outside, "secret.txt"));

        Should.Throw<StoragePathException>(() => _store.Resolve("passwd")).Message.ShouldContain("symlink");
        Should.Throw<StoragePathException>(() => _store.OpenRead("passwd"));
        await Should.ThrowAsync<StoragePathException>(() => _store.Sha256Async("passwd", CancellationToken.None));
    }

    [Fact]
    public async Task Symlink_inside_the_root_is_allowed()
    {
        Directory.CreateDirectory(Path.Combine(_rootPath, "real"));
        Directory.CreateSymbolicLink(Path.Combine(_rootPath, "absolute-alias"), Path.Combine(_rootPath, "real"));
        Directory.CreateSymbolicLink(Path.Combine(_rootPath, "relative-alias"), "real");

        await _store.WriteAllBytesAsync("absolute-alias/file.txt", "hello"u8.ToArray(), CancellationToken.None);

        File.ReadAllText(Path.Combine(_rootPath, "real", "file.txt")).ShouldBe("hello");
        using var reader = new StreamReader(_store.OpenRead("relative-alias/file.txt"));
        (await reader.ReadToEndAsync(CancellationToken.None)).ShouldBe("hello");
    }

    [Fact]
    public async Task Symlinked_directory_pointing_outside_is_refused_for_read_and_write()
    {
        Directory.CreateSymbolicLink(Path.Combine(_rootPath, "link"), _outside);

        Should.Throw<StoragePathException>(() => _store.OpenRead("link/secret.txt"));
        Should.Throw<StoragePathException>(() => _store.Exists("link/secret.txt"));
        await Should.ThrowAsync<StoragePathException>(
            () => _store.WriteAllBytesAsync("link/file.txt", "x"u8.ToArray(), CancellationToken.None));
        await Should.ThrowAsync<StoragePathException>(
            () => _store.WriteAsync("link/new/deeper.txt", (s, t) => s.WriteAsync("x"u8.ToArray(), t).AsTask(), CancellationToken.None));

        Directory.GetFileSystemEntries(_outside).Select(Path.GetFileName).ShouldBe(["secret.txt"]);
    }

    [Fact]
    public void Symlink_with_a_relative_target_that_climbs_out_is_refused()
    {
        Directory.CreateSymbolicLink(Path.Combine(_rootPath, "up"), "../elsewhere");

        Should.Throw<StoragePathException>(() => _store.Resolve("up/secret.txt"));
    }

    [Fact]
    public void Symlink_to_a_sibling_folder_sharing_the_root_name_prefix_is_refused()
    {
        var sibling = _rootPath + "-evil";
        Directory.CreateDirectory(sibling);
        Directory.CreateSymbolicLink(Path.Combine(_rootPath, "link"), sibling);

        Should.Throw<StoragePathException>(() => _store.Resolve("link/x"));
    }

    [Fact]
    public void Symlink_that_escapes_through_another_symlink_is_refused()
    {
        // "hop" is never named in the path, but "inside" leads through it to the outside folder.
        Directory.CreateSymbolicLink(Path.Combine(_rootPath, "hop"), _outside);
        File.CreateSymbolicLink(Path.Combine(_rootPath, "inside"), Path.Combine(_rootPath, "hop", "secret.txt"));

        Should.Throw<StoragePathException>(() => _store.Resolve("inside"));
    }

    [Fact]
    public async Task Dangling_symlink_pointing_outside_is_refused()
    {
        Directory.CreateSymbolicLink(Path.Combine(_rootPath, "later"), Path.Combine(_outside, "not-yet"));

        await Should.ThrowAsync<StoragePathException>(
            () => _store.WriteAllBytesAsync("later/file.txt", "x"u8.ToArray(), CancellationToken.None));
        Directory.Exists(Path.Combine(_outside, "not-yet")).ShouldBeFalse();
    }

    [Fact]
    public void Symlink_loop_is_refused()
    {
        Directory.CreateSymbolicLink(Path.Combine(_rootPath, "a"), "b");
        Directory.CreateSymbolicLink(Path.Combine(_rootPath, "b"), "a");

        Should.Throw<StoragePathException>(() => _store.Resolve("a/x")).Message.ShouldContain("too many");
    }

    [Fact]
    public async Task Nested_directories_are_created_inside_the_root()
    {
        await _store.WriteAllBytesAsync("checkpoints/sweep-1/trial-2/segment-0003.safetensors", new byte[] { 1, 2, 3 }, CancellationToken.None);

        File.ReadAllBytes(Path.Combine(_rootPath, "checkpoints", "sweep-1", "trial-2", "segment-0003.safetensors"))
            .ShouldBe(new byte[] { 1, 2, 3 });
        _store.Exists("checkpoints/sweep-1/trial-2").ShouldBeTrue();
    }

    [Fact]
    public async Task Write_replaces_existing_content()
    {
        await _store.WriteAllBytesAsync("reports/s/index.html", "old, and longer"u8.ToArray(), CancellationToken.None);
        await _store.WriteAllBytesAsync("reports/s/index.html", "new"u8.ToArray(), CancellationToken.None);

        File.ReadAllText(Path.Combine(_rootPath, "reports", "s", "index.html")).ShouldBe("new");
    }

    [Fact]
    public async Task Write_is_atomic_when_the_writer_throws()
    {
        await _store.WriteAllBytesAsync("features/k/manifest.json", "old"u8.ToArray(), CancellationToken.None);

        await Should.ThrowAsync<InvalidOperationException>(() => _store.WriteAsync(
            "features/k/manifest.json",
            async (stream, token) =>
            {
                await stream.WriteAsync("partial new content"u8.ToArray(), token);
                throw new InvalidOperationException("writer failed half-way");
            },
            CancellationToken.None));

        File.ReadAllText(Path.Combine(_rootPath, "features", "k", "manifest.json")).ShouldBe("old");
        Directory.GetFiles(Path.Combine(_rootPath, "features", "k")).Select(Path.GetFileName).ShouldBe(["manifest.json"]);
    }

    [Fact]
    public async Task Cancelled_write_leaves_no_temp_file()
    {
        using var cts = new CancellationTokenSource();

        await Should.ThrowAsync<OperationCanceledException>(() => _store.WriteAsync(
            "features/k/shard-00000.safetensors",
            async (stream, token) =>
            {
                await stream.WriteAsync(new byte[4096], token);
                await cts.CancelAsync();
                await stream.WriteAsync(new byte[4096], token);
            },
            cts.Token));

        Directory.GetFiles(Path.Combine(_rootPath, "features", "k")).ShouldBeEmpty();
    }

    [Fact]
    public async Task Cancelled_write_is_not_published_even_when_the_writer_ignores_the_token()
    {
        using var cts = new CancellationTokenSource();

        await Should.ThrowAsync<OperationCanceledException>(() => _store.WriteAsync(
            "a/file.bin",
            async (stream, _) =>
            {
                await stream.WriteAsync(new byte[16], CancellationToken.None);
                await cts.CancelAsync();
            },
            cts.Token));

        Directory.GetFiles(Path.Combine(_rootPath, "a")).ShouldBeEmpty();
    }

    [Fact]
    public async Task Write_reports_the_sha256_of_the_content()
    {
        var content = new byte[1_000_003];
        new Random(7).NextBytes(content);

        var sha256 = await _store.WriteWithSha256Async(
            "features/k/shard-00000.safetensors",
            async (stream, token) =>
            {
                // Uneven chunks, so the hash must follow the stream rather than one buffer.
                for (var offset = 0; offset < content.Length; offset += 65_537)
                {
                    await stream.WriteAsync(content.AsMemory(offset, Math.Min(65_537, content.Length - offset)), token);
                }
            },
            CancellationToken.None);

        var expected = Convert.ToHexStringLower(SHA256.HashData(content));
        sha256.ShouldBe(expected);
        File.ReadAllBytes(Path.Combine(_rootPath, "features", "k", "shard-00000.safetensors")).ShouldBe(content);
        (await _store.Sha256Async("features/k/shard-00000.safetensors", CancellationToken.None)).ShouldBe(expected);
    }

    [Fact]
    public async Task Failed_sha256_write_leaves_no_temp_file()
    {
        await Should.ThrowAsync<IOException>(() => _store.WriteWithSha256Async(
            "a/file.bin",
            async (stream, token) =>
            {
                await stream.WriteAsync(new byte[100], token);
                throw new IOException("disk went away");
            },
            CancellationToken.None));

        Directory.GetFiles(Path.Combine(_rootPath, "a")).ShouldBeEmpty();
    }

    [Fact]
    public async Task List_returns_relative_forward_slash_paths()
    {
        await _store.WriteAllBytesAsync("features/k/shard-00001.safetensors", new byte[] { 1 }, CancellationToken.None);
        await _store.WriteAllBytesAsync("features/k/shard-00000.safetensors", new byte[] { 1 }, CancellationToken.None);
        await _store.WriteAllBytesAsync("features/k/manifest.json", new byte[] { 1 }, CancellationToken.None);
        await _store.WriteAllBytesAsync("features/other/manifest.json", new byte[] { 1 }, CancellationToken.None);

        // A write in progress elsewhere must not show up as a file.
        File.WriteAllText(Path.Combine(_rootPath, "features", "k", ".shard-00002.safetensors.0123abcd.tmp"), "");

        _store.List("features/k", "shard-*").ShouldBe(
            ["features/k/shard-00000.safetensors", "features/k/shard-00001.safetensors"]);
        _store.List("features").ShouldBe(["features/k", "features/other"]);
        _store.List("").ShouldBe(["features"]);
        _store.List("missing").ShouldBeEmpty();
    }

    [Fact]
    public void List_refuses_a_folder_outside_the_root()
    {
        Directory.CreateSymbolicLink(Path.Combine(_rootPath, "link"), _outside);

        Should.Throw<StoragePathException>(() => _store.List("link"));
        Should.Throw<StoragePathException>(() => _store.List("../elsewhere"));
    }

    [Fact]
    public void To_relative_is_the_inverse_of_resolve()
    {
        _store.ToRelative(_store.Resolve("features/k/manifest.json")).ShouldBe("features/k/manifest.json");
        _store.ToRelative(_store.Root).ShouldBe("");
    }

    [Theory]
    [InlineData("/etc/passwd")]
    [InlineData("../elsewhere/secret.txt")]
    [InlineData("../root-evil/x")]
    public void To_relative_refuses_paths_outside_the_root(string pathFromRoot)
    {
        var full = pathFromRoot.StartsWith('/') ? pathFromRoot : _store.Root + "/" + pathFromRoot;

        Should.Throw<StoragePathException>(() => _store.ToRelative(full));
    }

    [Fact]
    public async Task Exists_reports_files_and_folders()
    {
        await _store.WriteAllBytesAsync("datasets/d/manifest.tsv", new byte[] { 1 }, CancellationToken.None);

        _store.Exists("datasets/d/manifest.tsv").ShouldBeTrue();
        _store.Exists("datasets/d").ShouldBeTrue();
        _store.Exists("datasets/other").ShouldBeFalse();
    }

    [Fact]
    public async Task Delete_removes_files_and_folders_and_tolerates_missing_ones()
    {
        await _store.WriteAllBytesAsync("checkpoints/s/t/segment-0001.safetensors", new byte[] { 1 }, CancellationToken.None);
        await _store.WriteAllBytesAsync("reports/s/index.html", new byte[] { 1 }, CancellationToken.None);

        _store.Delete("reports/s/index.html");
        _store.Delete("checkpoints/s");
        _store.Delete("checkpoints/s");
        _store.Delete("never/existed.txt");

        _store.Exists("reports/s/index.html").ShouldBeFalse();
        _store.Exists("checkpoints/s").ShouldBeFalse();
        _store.Exists("checkpoints").ShouldBeTrue();
    }

    [Fact]
    public void Deleting_a_symlink_removes_the_link_not_its_target()
    {
        Directory.CreateDirectory(Path.Combine(_rootPath, "real"));
        File.WriteAllText(Path.Combine(_rootPath, "real", "keep.txt"), "keep");
        Directory.CreateSymbolicLink(Path.Combine(_rootPath, "alias"), "real");

        _store.Delete("alias");

        Path.Exists(Path.Combine(_rootPath, "alias")).ShouldBeFalse();
        File.ReadAllText(Path.Combine(_rootPath, "real", "keep.txt")).ShouldBe("keep");
    }

    [Fact]
    public async Task Usage_bytes_sums_the_files_under_a_folder_without_following_symlinks()
    {
        await _store.WriteAllBytesAsync("features/a/shard-00000.safetensors", new byte[1000], CancellationToken.None);
        await _store.WriteAllBytesAsync("features/b/nested/shard-00000.safetensors", new byte[24], CancellationToken.None);
        await _store.WriteAllBytesAsync("reports/s/index.html", new byte[5], CancellationToken.None);
        Directory.CreateSymbolicLink(Path.Combine(_rootPath, "features", "link"), _outside);

        _store.UsageBytes("features").ShouldBe(1024);
        _store.UsageBytes().ShouldBe(1029);
        _store.UsageBytes("missing").ShouldBe(0);
    }

    [Fact]
    public async Task Written_bytes_are_read_back_unchanged()
    {
        var text = "model\tlayer\n" + new string('x', 10_000);
        await _store.WriteAllBytesAsync("features/k/manifest.json", Encoding.UTF8.GetBytes(text), CancellationToken.None);

        await using var stream = _store.OpenRead("features/k/manifest.json");
        using var reader = new StreamReader(stream);
        (await reader.ReadToEndAsync(CancellationToken.None)).ShouldBe(text);
    }
}
