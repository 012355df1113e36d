using System.Collections;
using System.Diagnostics.CodeAnalysis;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Weights;

/// <summary>The file formats <see cref="StateDictFile.Load"/> reads.</summary>
public enum WeightsFormat
{
    /// <summary>safetensors: a JSON header and raw bytes; holds no code.</summary>
    Safetensors,

    /// <summary>torch.save's zip archive (.pt/.pth since PyTorch 1.6), read with a restricted unpickler.</summary>
    PyTorchZip,

    /// <summary>TorchSharp's own Module.save format.</summary>
    TorchSharp,
}

/// <summary>
/// Tensors loaded from a weights file, by state_dict key, in the file's order. It owns them: disposing it
/// frees them all, so apply it to a module (<see cref="WeightsLoader.Apply(nn.Module, StateDict, bool)"/>,
/// which copies) and dispose it. The tensors are on the CPU in the file's dtypes.
/// </summary>
public sealed class StateDict : IReadOnlyDictionary<string, Tensor>, IDisposable
{
    private readonly List<string> _keys;
    private readonly Dictionary<string, Tensor> _tensors;

    internal StateDict(
        string source,
        WeightsFormat format,
        IReadOnlyList<KeyValuePair<string, Tensor>> tensors,
        IReadOnlyList<string> notes,
        IReadOnlyDictionary<string, string> metadata)
    {
        Source = source;
        Format = format;
        Notes = notes;
        Metadata = metadata;
        _keys = tensors.Select(pair => pair.Key).ToList();
        _tensors = tensors.ToDictionary(pair => pair.Key, pair => pair.Value, StringComparer.Ordinal);
    }

    /// <summary>The file the tensors came from, as the caller named it.</summary>
    public string Source { get; }

    /// <summary>The format the file turned out to be (by its content, not its extension).</summary>
    public WeightsFormat Format { get; }

    /// <summary>
    /// What loading did beyond reading, in sentences: which entry of a checkpoint was used, a stripped
    /// "module." prefix, entries skipped because they are not tensors.
    /// </summary>
    public IReadOnlyList<string> Notes { get; }

    /// <summary>A safetensors file's "__metadata__" (empty for the other formats).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    public int Count => _keys.Count;

    public IEnumerable<string> Keys => _keys;

    public IEnumerable<Tensor> Values => _keys.Select(key => _tensors[key]);

    public Tensor this[string key] => _tensors[key];

    public bool ContainsKey(string key) => _tensors.ContainsKey(key);

    public bool TryGetValue(string key, [MaybeNullWhen(false)] out Tensor value) => _tensors.TryGetValue(key, out value);

    public IEnumerator<KeyValuePair<string, Tensor>> GetEnumerator() =>
        _keys.Select(key => new KeyValuePair<string, Tensor>(key, _tensors[key])).GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    public void Dispose()
    {
        foreach (var tensor in _tensors.Values)
        {
            tensor.Dispose();
        }
    }
}
