using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Cluster.Storage.Formats;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Weights;

/// <summary>
/// Reads weights files into a <see cref="StateDict"/> and writes them as safetensors. Three formats are read,
/// told apart by their first bytes (not their extension): safetensors, torch.save's zip archive (.pt/.pth),
/// and TorchSharp's Module.save format. PyTorch pickles go through a restricted unpickler that refuses
/// anything but tensors, storages and ordered dicts, so loading a file never runs code from it. Any file that
/// cannot be read, for whatever reason, ends in one <see cref="WeightsFileException"/> naming it.
/// </summary>
public static class StateDictFile
{
    /// <summary>The prefix torch.nn.DataParallel (and DistributedDataParallel) puts before every key.</summary>
    public const string DataParallelPrefix = "module.";

    // Keys under which training scripts commonly nest the weights in a checkpoint, most specific first.
    private static readonly string[] CheckpointKeys = ["state_dict", "model_state_dict", "model"];

    // torch.save's format before PyTorch 1.6 starts with PROTO, then LONG1 of its magic number 0x1950a86a20f9469cfc6c.
    private static readonly byte[] LegacyMagic = [0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

    /// <summary>
    /// Loads every tensor in the weights file at <paramref name="path"/> onto the CPU. For a PyTorch checkpoint
    /// that nests the weights ({"state_dict": ...} or {"model": ...}) the nested dict is loaded; a "module."
    /// prefix on every key is removed. Both are recorded in <see cref="StateDict.Notes"/>.
    /// </summary>
    public static StateDict Load(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);

        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new WeightsFileException(path, "the file does not exist", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new WeightsFileException(path, $"the file cannot be read ({e.Message})", e);
        }

        using (stream)
        using (var scope = NewDisposeScope())
        {
            var notes = new List<string>();
            IReadOnlyDictionary<string, string> metadata = new Dictionary<string, string>();
            WeightsFormat format;
            List<KeyValuePair<string, Tensor>> tensors;
            try
            {
                format = Detect(path, stream);
                stream.Position = 0;
                switch (format)
                {
                    case WeightsFormat.Safetensors:
                        (tensors, metadata) = ReadSafetensors(path, stream);
                        break;
                    case WeightsFormat.PyTorchZip:
                        tensors = ReadPyTorchZip(path, stream, notes);
                        break;
                    default:
                        tensors = ReadTorchSharp(path, stream);
                        break;
                }
            }
            catch (SafetensorsFormatException e)
            {
                throw new WeightsFileException(path, e.Problem, e);
            }
            catch (ExternalException e)
            {
                // libtorch refusing something the checks above let through; still the file's fault.
                throw new WeightsFileException(path, $"libtorch could not build a tensor from it ({e.Message})", e);
            }
            catch (InvalidDataException e)
            {
                // ZipArchive finds some damage (a corrupt local header, an unknown compression) only when an entry is opened.
                throw new WeightsFileException(path, $"the zip archive is corrupt ({e.Message})", e);
            }
            catch (IOException e)
            {
                throw new WeightsFileException(path, $"the file cannot be read ({e.Message})", e);
            }

            tensors = StripDataParallelPrefix(tensors, notes);
            foreach (var (_, tensor) in tensors)
            {
                // The StateDict owns these; the scope frees storages and intermediate views.
                tensor.DetachFromDisposeScope();
            }
            return new StateDict(path, format, tensors, notes, metadata);
        }
    }

    /// <summary>
    /// Writes <paramref name="module"/>'s parameters and persistent buffers (its state_dict) to
    /// <paramref name="path"/> as safetensors, atomically: the file appears complete or not at all.
    /// </summary>
    public static void SaveSafetensors(string path, nn.Module module, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(module);
        SaveSafetensors(path, module.state_dict(), metadata);
    }

    /// <summary>
    /// Writes <paramref name="tensors"/> to <paramref name="path"/> as safetensors (sorted by key, in their own
    /// dtypes), atomically: the bytes go to a temporary file beside it, are flushed to disk, then renamed over it.
    /// </summary>
    public static void SaveSafetensors(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(tensors);

        var entries = new List<SafetensorsEntry>(tensors.Count);
        foreach (var (key, tensor) in tensors)
        {
            if (!TensorBytes.TryToSafetensors(tensor.dtype, out var dtype))
            {
                throw new ArgumentException($"Tensor '{key}' is {TensorBytes.Name(tensor.dtype)}, which safetensors files here do not hold.", nameof(tensors));
            }
            entries.Add(new SafetensorsEntry(key, dtype, tensor.shape));
        }

        var target = Path.GetFullPath(path);
        var directory = Path.GetDirectoryName(target)!;
        Directory.CreateDirectory(directory);

        // Same folder, so the rename is atomic; a leading dot keeps it out of listings.
        var temp = Path.Join(directory, $".{Path.GetFileName(target)}.{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8))}.tmp");
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                var writer = SafetensorsWriter.Begin(stream, entries, metadata);
                foreach (var entry in writer.Layout)
                {
                    using var scope = NewDisposeScope();
                    var bytes = tensors[entry.Name].detach().cpu().contiguous();
                    TensorBytes.Drain(bytes, chunk => writer.Write(entry.Name, chunk));
                }
                writer.Complete();

                // Durable before visible: after a crash the target is the old file or the whole new one.
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, target, overwrite: true);
        }
        catch
        {
            try
            {
                File.Delete(temp);
            }
            catch (IOException)
            {
                // The original error matters more than a leftover temporary file.
            }
            throw;
        }
    }

    private static WeightsFormat Detect(string path, Stream stream)
    {
        Span<byte> head = stackalloc byte[16];
        head = head[..stream.ReadAtLeast(head, head.Length, throwOnEndOfStream: false)];

        if (head.Length >= 4 && head[0] == 'P' && head[1] == 'K' && ((head[2] == 3 && head[3] == 4) || (head[2] == 5 && head[3] == 6)))
        {
            return WeightsFormat.PyTorchZip;
        }
        if (head.Length >= 14 && head[0] == 0x80 && head[2..14].SequenceEqual(LegacyMagic))
        {
            throw new WeightsFileException(
                path,
                "it is in torch.save's format from before PyTorch 1.6 (a bare pickle stream), which is not read here; "
                + "re-save it with a current torch.save, or as safetensors");
        }

        // safetensors: a little-endian header length (far below 4 GiB, so its high bytes are zero), then '{'.
        if (head.Length >= 9 && head[8] == '{' && head[4..8].IndexOfAnyExcept((byte)0) < 0)
        {
            return WeightsFormat.Safetensors;
        }

        // A damaged safetensors file is best explained by the safetensors reader.
        return string.Equals(Path.GetExtension(path), ".safetensors", StringComparison.OrdinalIgnoreCase)
            ? WeightsFormat.Safetensors
            : WeightsFormat.TorchSharp;
    }

    private static (List<KeyValuePair<string, Tensor>>, IReadOnlyDictionary<string, string>) ReadSafetensors(string path, Stream stream)
    {
        using var reader = new SafetensorsReader(stream, path, leaveOpen: true);
        var tensors = new List<KeyValuePair<string, Tensor>>(reader.Tensors.Count);
        foreach (var info in reader.Tensors)
        {
            var tensor = empty(info.Shape.ToArray(), TensorBytes.ToScalarType(info.Dtype));
            tensors.Add(new(info.Name, tensor));
            TensorBytes.Fill(tensor, (offset, destination) => reader.ReadTensor(info, offset, destination));
        }
        return (tensors, reader.Metadata);
    }

    private static List<KeyValuePair<string, Tensor>> ReadTorchSharp(string path, Stream stream)
    {
        try
        {
            return TorchSharpFormat.Read(stream);
        }
        catch (FormatException e)
        {
            throw new WeightsFileException(
                path,
                "not a weights file we can read: it does not start like safetensors or a torch.save zip archive, "
                + $"and as TorchSharp's Module.save format {e.Message}",
                e);
        }
    }

    private static List<KeyValuePair<string, Tensor>> ReadPyTorchZip(string path, Stream stream, List<string> notes)
    {
        using var archive = PyTorchArchive.Open(path, stream);
        var entries = FindStateDict(archive.ReadPickle(), path, notes);

        var storages = new Dictionary<string, (PickledStorage Storage, Tensor Tensor)>(StringComparer.Ordinal);
        var tensors = new List<KeyValuePair<string, Tensor>>(entries.Count);
        foreach (var (key, pickled) in entries)
        {
            if (!storages.TryGetValue(pickled.Storage.Key, out var storage))
            {
                storage = (pickled.Storage, archive.ReadStorage(pickled.Storage));
                storages.Add(pickled.Storage.Key, storage);
            }
            else if (storage.Storage.Dtype != pickled.Storage.Dtype || storage.Storage.ElementCount != pickled.Storage.ElementCount)
            {
                throw new WeightsFileException(path, $"storage '{pickled.Storage.Key}' is described two different ways");
            }

            tensors.Add(new(key, View(path, key, pickled, storage.Tensor)));
        }
        return tensors;
    }

    // The tensor _rebuild_tensor_v2 describes: size and stride over the storage from an offset. Bounds are
    // checked here, so a hostile file cannot make libtorch read outside the storage.
    private static Tensor View(string path, string key, PickledTensor pickled, Tensor storage)
    {
        var (size, stride, offset) = (pickled.Size, pickled.Stride, pickled.StorageOffset);
        long elements;
        long lastIndex = offset;
        try
        {
            elements = size.Aggregate(1L, (total, dimension) => checked(total * dimension));
            for (var d = 0; d < size.Length; d++)
            {
                if (size[d] > 0)
                {
                    lastIndex = checked(lastIndex + (size[d] - 1) * stride[d]);
                }
            }
        }
        catch (OverflowException)
        {
            throw new WeightsFileException(path, $"tensor '{key}' has a size or stride too large for any storage");
        }

        if (elements > 0 && lastIndex >= pickled.Storage.ElementCount)
        {
            throw new WeightsFileException(
                path,
                $"tensor '{key}' of size [{string.Join(", ", size)}], stride [{string.Join(", ", stride)}] and offset {offset} "
                + $"reaches element {lastIndex} of a storage of {pickled.Storage.ElementCount}");
        }

        if (offset == 0 && elements == pickled.Storage.ElementCount && IsContiguous(size, stride))
        {
            return storage.view(size);
        }

        // A slice, a transpose or one of several tensors sharing a storage: copied out into its own contiguous memory.
        using var strided = storage.as_strided(size, stride, offset);
        return strided.contiguous();
    }

    private static bool IsContiguous(long[] size, long[] stride)
    {
        long expected = 1;
        for (var d = size.Length - 1; d >= 0; d--)
        {
            if (size[d] != 1 && stride[d] != expected)
            {
                return false;
            }
            expected *= size[d];
        }
        return true;
    }

    private static List<(string Key, PickledTensor Tensor)> FindStateDict(object? root, string path, List<string> notes)
    {
        if (root is not PickleDict dict)
        {
            var what = root switch
            {
                PickledTensor => "a single tensor",
                List<object?> => "a list",
                PickleTuple => "a tuple",
                null => "None",
                _ => "a plain value",
            };
            throw new WeightsFileException(path, $"it holds {what}, not a state_dict (a dict of tensors); save model.state_dict()");
        }

        var chosen = dict;
        if (!dict.Items.Values.Any(value => value is PickledTensor))
        {
            var nested = CheckpointKeys
                .Select(name => (Name: name, Value: dict.Items.GetValueOrDefault(name) as PickleDict))
                .FirstOrDefault(candidate => candidate.Value?.Items.Values.Any(value => value is PickledTensor) == true);
            if (nested.Value is null)
            {
                throw new WeightsFileException(
                    path,
                    $"it holds a dict without tensors (keys: {DescribeKeys(dict.Items.Keys)}); expected a state_dict, "
                    + $"or a checkpoint with the weights under {string.Join(", ", CheckpointKeys.Select(key => $"'{key}'"))}");
            }

            chosen = nested.Value;
            notes.Add($"The file is a checkpoint (keys: {DescribeKeys(dict.Items.Keys)}); the weights were read from its '{nested.Name}' entry.");
        }

        var tensors = new List<(string, PickledTensor)>();
        var skipped = new List<object>();
        foreach (var (key, value) in chosen.Items)
        {
            if (key is string name && value is PickledTensor tensor)
            {
                tensors.Add((name, tensor));
            }
            else
            {
                skipped.Add(key);
            }
        }
        if (skipped.Count > 0)
        {
            notes.Add(skipped.Count == 1
                ? $"Skipped 1 entry that is not a tensor: {DescribeKeys(skipped)}."
                : $"Skipped {skipped.Count} entries that are not tensors: {DescribeKeys(skipped)}.");
        }
        return tensors;
    }

    private static List<KeyValuePair<string, Tensor>> StripDataParallelPrefix(List<KeyValuePair<string, Tensor>> tensors, List<string> notes)
    {
        if (tensors.Count == 0 || !tensors.All(pair => pair.Key.StartsWith(DataParallelPrefix, StringComparison.Ordinal)))
        {
            return tensors;
        }

        notes.Add($"Every key started with '{DataParallelPrefix}' (saved from torch.nn.DataParallel); the prefix was removed from all {tensors.Count}.");
        return tensors.Select(pair => new KeyValuePair<string, Tensor>(pair.Key[DataParallelPrefix.Length..], pair.Value)).ToList();
    }

    private static string DescribeKeys(IEnumerable<object> keys)
    {
        var list = keys.Select(key => key is string text ? text : Convert.ToString(key, System.Globalization.CultureInfo.InvariantCulture) ?? "?").ToList();
        return list.Count <= 10 ? string.Join(", ", list) : string.Join(", ", list.Take(10)) + $", ... ({list.Count - 10} more)";
    }
}
