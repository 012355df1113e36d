using System.Collections;
using TorchSharp;

namespace Cluster.GpuWorker.Weights;

// The plain data the restricted unpickler builds. Nothing here can run code: a pickle's "objects" become
// these records, and the only callables are the few the unpickler itself implements.

/// <summary>A module-qualified name from a GLOBAL opcode, already checked against the allow-list.</summary>
internal sealed record PickleGlobal(string Module, string Name)
{
    public override string ToString() => $"{Module}.{Name}";
}

/// <summary>An immutable pickle tuple, with value equality so it can be a dict key.</summary>
internal sealed class PickleTuple : IReadOnlyList<object?>, IEquatable<PickleTuple>
{
    // Tuples are hashed recursively when used as keys; a hostile pickle could nest them deep enough to
    // overflow the stack, so depth is bounded where they are built.
    public const int MaxDepth = 64;

    private readonly object?[] _items;

    public PickleTuple(object?[] items)
    {
        _items = items;
        Depth = 1 + items.OfType<PickleTuple>().Select(tuple => tuple.Depth).DefaultIfEmpty(0).Max();
    }

    public static PickleTuple Empty { get; } = new([]);

    public int Depth { get; }

    public int Count => _items.Length;

    public object? this[int index] => _items[index];

    public IEnumerator<object?> GetEnumerator() => ((IEnumerable<object?>)_items).GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => _items.GetEnumerator();

    public bool Equals(PickleTuple? other) =>
        other is not null && _items.Length == other._items.Length && _items.Zip(other._items).All(pair => Equals(pair.First, pair.Second));

    public override bool Equals(object? obj) => obj is PickleTuple other && Equals(other);

    public override int GetHashCode()
    {
        var hash = new HashCode();
        foreach (var item in _items)
        {
            hash.Add(item);
        }
        return hash.ToHashCode();
    }
}

/// <summary>A pickle dict or OrderedDict, in insertion order; keys are strings, numbers, booleans or tuples of them.</summary>
internal sealed class PickleDict
{
    public OrderedDictionary<object, object?> Items { get; } = new();
}

/// <summary>A storage named by a persistent id: its bytes are the archive entry data/&lt;Key&gt;.</summary>
internal sealed record PickledStorage(string Key, torch.ScalarType Dtype, string Location, long ElementCount);

/// <summary>What _rebuild_tensor_v2 was asked to build: a strided view of a storage.</summary>
internal sealed record PickledTensor(PickledStorage Storage, long StorageOffset, long[] Size, long[] Stride, bool RequiresGrad);
