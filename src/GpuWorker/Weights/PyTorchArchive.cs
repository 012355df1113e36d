using System.IO.Compression;
using System.IO.Hashing;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Weights;

/// <summary>
/// A file written by torch.save since PyTorch 1.6: a zip archive holding &lt;prefix&gt;/data.pkl (the object,
/// pickled, with each storage replaced by a persistent id), &lt;prefix&gt;/data/&lt;key&gt; (each storage's raw
/// bytes), &lt;prefix&gt;/version and, from PyTorch 2, &lt;prefix&gt;/byteorder. The prefix is the file's stem at
/// the time it was saved, so it is found, not assumed.
/// </summary>
internal sealed class PyTorchArchive : IDisposable
{
    // Deflate cannot expand data by much more than 1000x; an entry that claims more is a zip bomb or corrupt.
    private const long MaxCompressionRatio = 1100;

    private readonly ZipArchive _zip;
    private readonly string _filePath;
    private readonly long _fileLength;
    private readonly string _prefix;

    private PyTorchArchive(ZipArchive zip, string filePath, long fileLength, string prefix)
    {
        _zip = zip;
        _filePath = filePath;
        _fileLength = fileLength;
        _prefix = prefix;
    }

    public static PyTorchArchive Open(string filePath, Stream stream)
    {
        ZipArchive zip;
        try
        {
            zip = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: true);
        }
        catch (InvalidDataException e)
        {
            throw new WeightsFileException(filePath, $"the zip archive is truncated or corrupt ({e.Message})", e);
        }

        try
        {
            var pickles = zip.Entries
                .Where(entry => entry.FullName.EndsWith("/data.pkl", StringComparison.Ordinal) && entry.FullName.Count(c => c == '/') == 1)
                .ToList();
            if (pickles.Count != 1)
            {
                throw new WeightsFileException(
                    filePath,
                    pickles.Count == 0
                        ? "the zip archive has no <name>/data.pkl, so it was not written by torch.save"
                        : $"the zip archive has {pickles.Count} data.pkl records; torch.save writes one");
            }

            var archive = new PyTorchArchive(zip, filePath, stream.Length, pickles[0].FullName[..pickles[0].FullName.IndexOf('/')]);
            archive.CheckByteOrder();
            return archive;
        }
        catch
        {
            zip.Dispose();
            throw;
        }
    }

    /// <summary>Reads data.pkl with the restricted unpickler: plain data, tensors as <see cref="PickledTensor"/>.</summary>
    public object? ReadPickle()
    {
        var entry = _zip.GetEntry($"{_prefix}/data.pkl")!;
        CheckPlausible(entry, "data.pkl");
        if (entry.Length > Array.MaxLength)
        {
            throw new WeightsFileException(_filePath, $"data.pkl is {entry.Length} bytes, far more than any state_dict's");
        }

        var bytes = new byte[entry.Length];
        using (var stream = entry.Open())
        {
            ReadExactly(stream, bytes, "data.pkl");
        }
        CheckCrc(entry, Crc32.HashToUInt32(bytes), "data.pkl");
        return RestrictedUnpickler.Load(bytes, _filePath);
    }

    /// <summary>Reads a storage's bytes into a new one-dimensional tensor of its dtype and element count.</summary>
    public Tensor ReadStorage(PickledStorage storage)
    {
        var name = $"data/{storage.Key}";
        var entry = _zip.GetEntry($"{_prefix}/{name}")
            ?? throw new WeightsFileException(_filePath, $"the pickle refers to storage '{storage.Key}', but the archive has no {name}");

        long expected;
        try
        {
            expected = checked(storage.ElementCount * TensorBytes.SizeOf(storage.Dtype));
        }
        catch (OverflowException)
        {
            throw new WeightsFileException(_filePath, $"storage '{storage.Key}' claims {storage.ElementCount} elements, more than a file can hold");
        }
        if (entry.Length != expected)
        {
            throw new WeightsFileException(
                _filePath,
                $"{name} has {entry.Length} bytes, but the pickle says it holds {storage.ElementCount} {TensorBytes.Name(storage.Dtype)} elements ({expected} bytes)");
        }
        CheckPlausible(entry, name);

        var tensor = empty([storage.ElementCount], storage.Dtype);
        try
        {
            using var stream = entry.Open();
            var crc = new Crc32();
            TensorBytes.Fill(tensor, (_, destination) =>
            {
                ReadExactly(stream, destination, name);
                crc.Append(destination);
            });
            CheckCrc(entry, crc.GetCurrentHashAsUInt32(), name);
            return tensor;
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
    }

    public void Dispose() => _zip.Dispose();

    private void CheckByteOrder()
    {
        // PyTorch 2 records the writer's byte order; older archives are little-endian by construction.
        var entry = _zip.GetEntry($"{_prefix}/byteorder");
        if (entry is null)
        {
            return;
        }
        CheckPlausible(entry, "byteorder");
        if (entry.Length > 16)
        {
            throw new WeightsFileException(_filePath, $"the byteorder record is {entry.Length} bytes long; it should say 'little' or 'big'");
        }

        using var reader = new StreamReader(entry.Open());
        var order = reader.ReadToEnd().Trim();
        if (order != "little")
        {
            throw new WeightsFileException(
                _filePath,
                $"the tensors are stored {order}-endian; only little-endian files (what every common machine writes) are read");
        }
    }

    private void CheckPlausible(ZipArchiveEntry entry, string name)
    {
        if (entry.CompressedLength > _fileLength || entry.Length > Math.Max(entry.CompressedLength, 1) * MaxCompressionRatio)
        {
            throw new WeightsFileException(
                _filePath,
                $"the zip archive is corrupt: {name} claims {entry.Length} bytes from {entry.CompressedLength} stored in a {_fileLength}-byte file");
        }
    }

    // .NET's ZipArchive does not verify entry checksums, and a flipped bit in a weight would otherwise load
    // silently; torch.save always records them.
    private void CheckCrc(ZipArchiveEntry entry, uint actual, string name)
    {
        if (actual != entry.Crc32)
        {
            throw new WeightsFileException(
                _filePath,
                $"{name} is corrupt: its CRC-32 is {actual:x8}, the zip archive records {entry.Crc32:x8}");
        }
    }

    private void ReadExactly(Stream stream, Span<byte> destination, string name)
    {
        try
        {
            stream.ReadExactly(destination);
        }
        catch (EndOfStreamException e)
        {
            throw new WeightsFileException(_filePath, $"{name} ends early: the zip archive is truncated or corrupt", e);
        }
        catch (InvalidDataException e)
        {
            throw new WeightsFileException(_filePath, $"{name} cannot be read: the zip archive is corrupt ({e.Message})", e);
        }
    }
}
