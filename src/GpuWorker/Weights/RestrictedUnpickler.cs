using System.Buffers.Binary;
using System.Globalization;
using System.Numerics;
using System.Text;
using TorchSharp;

namespace Cluster.GpuWorker.Weights;

/// <summary>
/// Reads the data.pkl of a torch.save archive into plain data (<see cref="PickleDict"/>, lists,
/// <see cref="PickleTuple"/>, strings, numbers, <see cref="PickledTensor"/>) and never executes anything.
/// </summary>
/// <remarks>
/// A pickle is a small program: GLOBAL names a Python callable and REDUCE calls it, which is how a hostile
/// "weights" file runs os.system. Here GLOBAL is checked against an allow-list the moment it appears (an
/// OrderedDict, the tensor rebuild functions, the typed storages), and REDUCE only ever "calls" the handful of
/// functions implemented below, which build records. Every length is checked against the bytes that are left
/// before anything is allocated, and the loop ends at STOP or at the end of the data, so a corrupt or hostile
/// pickle ends in a <see cref="WeightsFileException"/>, not a hang or a crash. The opcodes are those of
/// protocols 2 to 5 that pickle writes for dicts, lists, tuples, strings, numbers and reduce calls; the
/// text-based protocol 0/1 forms, sets and extension codes are refused as unsupported.
/// </remarks>
internal sealed class RestrictedUnpickler
{
    private static readonly Dictionary<(string Module, string Name), torch.ScalarType> StorageTypes = new()
    {
        [("torch", "FloatStorage")] = torch.ScalarType.Float32,
        [("torch", "DoubleStorage")] = torch.ScalarType.Float64,
        [("torch", "HalfStorage")] = torch.ScalarType.Float16,
        [("torch", "BFloat16Storage")] = torch.ScalarType.BFloat16,
        [("torch", "LongStorage")] = torch.ScalarType.Int64,
        [("torch", "IntStorage")] = torch.ScalarType.Int32,
        [("torch", "ShortStorage")] = torch.ScalarType.Int16,
        [("torch", "CharStorage")] = torch.ScalarType.Int8,
        [("torch", "ByteStorage")] = torch.ScalarType.Byte,
        [("torch", "BoolStorage")] = torch.ScalarType.Bool,
    };

    private static readonly PickleGlobal OrderedDict = new("collections", "OrderedDict");
    private static readonly PickleGlobal RebuildTensorV2 = new("torch._utils", "_rebuild_tensor_v2");
    private static readonly PickleGlobal RebuildParameter = new("torch._utils", "_rebuild_parameter");

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private readonly byte[] _data;
    private readonly string _filePath;
    private readonly Dictionary<long, object?> _memo = new();
    private readonly Stack<List<object?>> _marks = new();
    private List<object?> _stack = new();
    private int _position;
    private int _opcodeStart;

    private RestrictedUnpickler(byte[] data, string filePath)
    {
        _data = data;
        _filePath = filePath;
    }

    /// <summary>The names a pickle may refer to, as "module.name", for documentation and messages.</summary>
    public static IEnumerable<string> AllowedGlobals =>
        new[] { OrderedDict, RebuildTensorV2, RebuildParameter }.Select(global => global.ToString())
            .Concat(StorageTypes.Keys.Select(key => $"{key.Module}.{key.Name}"));

    /// <summary>Reads <paramref name="data"/> (one pickle) into plain data; <paramref name="filePath"/> names it in errors.</summary>
    public static object? Load(byte[] data, string filePath) => new RestrictedUnpickler(data, filePath).Run();

    private object? Run()
    {
        while (true)
        {
            _opcodeStart = _position;
            var opcode = ReadByte();
            switch (opcode)
            {
                case 0x80: // PROTO
                    var protocol = ReadByte();
                    if (protocol > 5)
                    {
                        throw Corrupt($"pickle protocol {protocol} is newer than any Python writes (5)");
                    }
                    break;
                case 0x95: // FRAME: a length hint for buffered readers; the data is all in memory already.
                    ReadSpan(8);
                    break;
                case (byte)'.': // STOP
                    var result = Pop();
                    if (_marks.Count > 0)
                    {
                        throw Corrupt("the pickle stops with an unclosed MARK");
                    }
                    return result;

                case (byte)'(': // MARK
                    _marks.Push(_stack);
                    _stack = new List<object?>();
                    break;
                case (byte)'0': // POP
                    Pop();
                    break;
                case (byte)'1': // POP_MARK
                    PopMark();
                    break;
                case (byte)'2': // DUP
                    Push(Peek());
                    break;

                case (byte)'N': // NONE
                    Push(null);
                    break;
                case 0x88: // NEWTRUE
                    Push(true);
                    break;
                case 0x89: // NEWFALSE
                    Push(false);
                    break;
                case (byte)'J': // BININT
                    Push((long)BinaryPrimitives.ReadInt32LittleEndian(ReadSpan(4)));
                    break;
                case (byte)'K': // BININT1
                    Push((long)ReadByte());
                    break;
                case (byte)'M': // BININT2
                    Push((long)BinaryPrimitives.ReadUInt16LittleEndian(ReadSpan(2)));
                    break;
                case 0x8a: // LONG1
                    Push(ReadLong(ReadByte()));
                    break;
                case 0x8b: // LONG4
                    Push(ReadLong(ReadLength(4)));
                    break;
                case (byte)'G': // BINFLOAT: big-endian, unlike everything else.
                    Push(BinaryPrimitives.ReadDoubleBigEndian(ReadSpan(8)));
                    break;

                case (byte)'X': // BINUNICODE
                    Push(ReadUtf8(ReadLength(4)));
                    break;
                case 0x8c: // SHORT_BINUNICODE
                    Push(ReadUtf8(ReadByte()));
                    break;
                case 0x8d: // BINUNICODE8
                    Push(ReadUtf8(ReadLength(8)));
                    break;
                case (byte)'U': // SHORT_BINSTRING (a Python 2 str; torch.load decodes it as UTF-8 too)
                    Push(ReadUtf8(ReadByte()));
                    break;
                case (byte)'T': // BINSTRING
                    Push(ReadUtf8(ReadLength(4)));
                    break;
                case (byte)'C': // SHORT_BINBYTES
                    Push(ReadSpan(ReadByte()).ToArray());
                    break;
                case (byte)'B': // BINBYTES
                    Push(ReadSpan(ReadLength(4)).ToArray());
                    break;
                case 0x8e: // BINBYTES8
                    Push(ReadSpan(ReadLength(8)).ToArray());
                    break;

                case (byte)')': // EMPTY_TUPLE
                    Push(PickleTuple.Empty);
                    break;
                case (byte)'t': // TUPLE
                    Push(MakeTuple(PopMark().ToArray()));
                    break;
                case 0x85: // TUPLE1
                    Push(MakeTuple(PopMany(1)));
                    break;
                case 0x86: // TUPLE2
                    Push(MakeTuple(PopMany(2)));
                    break;
                case 0x87: // TUPLE3
                    Push(MakeTuple(PopMany(3)));
                    break;

                case (byte)']': // EMPTY_LIST
                    Push(new List<object?>());
                    break;
                case (byte)'l': // LIST
                    Push(PopMark());
                    break;
                case (byte)'a': // APPEND
                    var item = Pop();
                    PeekAs<List<object?>>("APPEND").Add(item);
                    break;
                case (byte)'e': // APPENDS
                    var items = PopMark();
                    PeekAs<List<object?>>("APPENDS").AddRange(items);
                    break;

                case (byte)'}': // EMPTY_DICT
                    Push(new PickleDict());
                    break;
                case (byte)'d': // DICT
                    var dict = new PickleDict();
                    SetItems(dict, PopMark());
                    Push(dict);
                    break;
                case (byte)'s': // SETITEM
                    var value = Pop();
                    var key = Pop();
                    SetItems(PeekAs<PickleDict>("SETITEM"), [key, value]);
                    break;
                case (byte)'u': // SETITEMS
                    var pairs = PopMark();
                    SetItems(PeekAs<PickleDict>("SETITEMS"), pairs);
                    break;

                case (byte)'c': // GLOBAL: "module\nname\n"
                    var module = ReadLine();
                    Push(Allow(module, ReadLine()));
                    break;
                case 0x93: // STACK_GLOBAL
                    var name = Pop();
                    var moduleName = Pop();
                    if (moduleName is not string m || name is not string n)
                    {
                        throw Corrupt("STACK_GLOBAL expects two strings on the stack");
                    }
                    Push(Allow(m, n));
                    break;
                case (byte)'Q': // BINPERSID
                    Push(PersistentLoad(Pop()));
                    break;
                case (byte)'R': // REDUCE
                    var arguments = Pop();
                    var callable = Pop();
                    Push(Reduce(callable, arguments));
                    break;
                case 0x81: // NEWOBJ: cls.__new__(cls, *args); only OrderedDict can be a class here.
                    var newArguments = Pop();
                    var type = Pop();
                    if (!Equals(type, OrderedDict))
                    {
                        throw Corrupt($"NEWOBJ of {Describe(type)} is not supported");
                    }
                    Push(Reduce(type, newArguments));
                    break;
                case (byte)'b': // BUILD: obj.__setstate__(state)
                    _ = Pop();
                    Build(Peek());
                    break;

                case (byte)'q': // BINPUT
                    Memoize(ReadByte());
                    break;
                case (byte)'r': // LONG_BINPUT
                    Memoize(BinaryPrimitives.ReadUInt32LittleEndian(ReadSpan(4)));
                    break;
                case 0x94: // MEMOIZE
                    Memoize(_memo.Count);
                    break;
                case (byte)'h': // BINGET
                    Push(Recall(ReadByte()));
                    break;
                case (byte)'j': // LONG_BINGET
                    Push(Recall(BinaryPrimitives.ReadUInt32LittleEndian(ReadSpan(4))));
                    break;

                default:
                    throw Corrupt(
                        $"pickle opcode 0x{opcode:x2} ({Printable(opcode)}) is not supported; "
                        + "only what torch.save writes for tensors and plain containers is read");
            }
        }
    }

    private PickleGlobal Allow(string module, string name)
    {
        var global = new PickleGlobal(module, name);
        if (global == OrderedDict || global == RebuildTensorV2 || global == RebuildParameter || StorageTypes.ContainsKey((module, name)))
        {
            return global;
        }

        throw new UnsafeWeightsFileException(_filePath, Printable(global.ToString()));
    }

    private object Reduce(object? callable, object? arguments)
    {
        if (callable is not PickleGlobal global)
        {
            throw Corrupt($"REDUCE calls {Describe(callable)}, which is not a callable");
        }
        if (arguments is not PickleTuple args)
        {
            throw Corrupt($"REDUCE of {global} has {Describe(arguments)} for its arguments, not a tuple");
        }

        if (global == OrderedDict)
        {
            return MakeOrderedDict(args);
        }
        if (global == RebuildTensorV2)
        {
            return RebuildTensor(args);
        }
        if (global == RebuildParameter)
        {
            // _rebuild_parameter(data, requires_grad, backward_hooks): a Parameter is its data for our purposes.
            if (args.Count != 3 || args[0] is not PickledTensor data)
            {
                throw Corrupt("_rebuild_parameter expects (tensor, requires_grad, backward_hooks)");
            }
            return data;
        }

        throw Corrupt($"REDUCE calls {global}, which is only valid inside a storage's persistent id");
    }

    private PickleDict MakeOrderedDict(PickleTuple args)
    {
        var dict = new PickleDict();
        if (args.Count == 0)
        {
            return dict;
        }

        // OrderedDict([(key, value), ...]), which some writers use instead of SETITEMS.
        if (args.Count == 1 && args[0] is List<object?> pairs)
        {
            foreach (var pair in pairs)
            {
                if (pair is not PickleTuple { Count: 2 } keyValue)
                {
                    throw Corrupt("OrderedDict expects a list of (key, value) pairs");
                }
                SetItems(dict, [keyValue[0], keyValue[1]]);
            }
            return dict;
        }

        throw Corrupt($"OrderedDict called with {args.Count} arguments");
    }

    // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
    private PickledTensor RebuildTensor(PickleTuple args)
    {
        if (args.Count is not (6 or 7))
        {
            throw Corrupt($"_rebuild_tensor_v2 expects 6 or 7 arguments, not {args.Count}");
        }
        if (args[0] is not PickledStorage storage)
        {
            throw Corrupt($"_rebuild_tensor_v2 expects a storage first, not {Describe(args[0])}");
        }
        if (args[1] is not long offset || offset < 0)
        {
            throw Corrupt($"_rebuild_tensor_v2 expects a non-negative storage offset, not {Describe(args[1])}");
        }
        var size = ReadDimensions(args[2], "size");
        var stride = ReadDimensions(args[3], "stride");
        if (size.Length != stride.Length)
        {
            throw Corrupt($"_rebuild_tensor_v2 has size with {size.Length} dimensions and stride with {stride.Length}");
        }
        if (args[4] is not bool requiresGrad)
        {
            throw Corrupt($"_rebuild_tensor_v2 expects requires_grad to be a boolean, not {Describe(args[4])}");
        }

        // args[5] (backward hooks) is an empty OrderedDict in any saved state_dict, and args[6] (metadata)
        // holds Python-side attributes; neither affects the values.
        return new PickledTensor(storage, offset, size, stride, requiresGrad);
    }

    private long[] ReadDimensions(object? value, string what)
    {
        if (value is not PickleTuple tuple || tuple.Any(item => item is not long dimension || dimension < 0))
        {
            throw Corrupt($"_rebuild_tensor_v2 expects {what} to be a tuple of non-negative integers, not {Describe(value)}");
        }
        return tuple.Cast<long>().ToArray();
    }

    // ('storage', storage_type, key, location, numel), as torch.save's persistent_id writes it.
    private PickledStorage PersistentLoad(object? pid)
    {
        if (pid is not PickleTuple { Count: 5 } tuple || tuple[0] is not "storage")
        {
            throw Corrupt($"a persistent id is {Describe(pid)}, not ('storage', type, key, location, numel)");
        }
        if (tuple[1] is not PickleGlobal type || !StorageTypes.TryGetValue((type.Module, type.Name), out var dtype))
        {
            throw Corrupt($"a persistent id names {Describe(tuple[1])}, not a typed storage");
        }
        if (tuple[2] is not string key || tuple[3] is not string location || tuple[4] is not long count || count < 0)
        {
            throw Corrupt("a persistent id does not have a string key, a string location and a non-negative size");
        }

        return new PickledStorage(key, dtype, location, count);
    }

    private void Build(object? target)
    {
        switch (target)
        {
            case PickleDict:
                // OrderedDict's state is its attributes, e.g. state_dict()._metadata (per-module versions).
                // Nothing in it changes a tensor, so it is read and dropped.
                break;
            case PickledTensor:
                // Python-side tensor attributes; same reasoning.
                break;
            default:
                throw Corrupt($"BUILD sets the state of {Describe(target)}, which is not supported");
        }
    }

    private void SetItems(PickleDict dict, List<object?> keysAndValues)
    {
        if (keysAndValues.Count % 2 != 0)
        {
            throw Corrupt("SETITEMS has a key without a value");
        }
        for (var i = 0; i < keysAndValues.Count; i += 2)
        {
            var key = keysAndValues[i];
            if (key is not (string or long or bool or double or BigInteger or PickleTuple))
            {
                throw Corrupt($"a dict key is {Describe(key)}, which is not supported");
            }
            dict.Items[key] = keysAndValues[i + 1];
        }
    }

    private PickleTuple MakeTuple(object?[] items)
    {
        var tuple = new PickleTuple(items);
        if (tuple.Depth > PickleTuple.MaxDepth)
        {
            throw Corrupt($"tuples are nested more than {PickleTuple.MaxDepth} deep");
        }
        return tuple;
    }

    private object ReadLong(int length)
    {
        // Two's complement, little-endian. Python ints are unbounded; a state_dict's are small, so a huge one
        // is refused rather than allocated.
        if (length > 1024)
        {
            throw Corrupt($"an integer of {length} bytes is larger than any weights file needs");
        }
        var bytes = ReadSpan(length);
        var value = new BigInteger(bytes, isUnsigned: false, isBigEndian: false);
        return value >= long.MinValue && value <= long.MaxValue ? (long)value : value;
    }

    private string ReadUtf8(int length)
    {
        var bytes = ReadSpan(length);
        try
        {
            return StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException e)
        {
            throw Corrupt("a string is not valid UTF-8", e);
        }
    }

    private string ReadLine()
    {
        var end = Array.IndexOf(_data, (byte)'\n', _position);
        if (end < 0 || end - _position > 256)
        {
            throw Corrupt("a GLOBAL name is not terminated by a newline");
        }
        var line = ReadUtf8(end - _position);
        _position++;
        return line;
    }

    private int ReadLength(int size)
    {
        var span = ReadSpan(size);
        var length = size switch
        {
            4 => BinaryPrimitives.ReadUInt32LittleEndian(span),
            _ => BinaryPrimitives.ReadUInt64LittleEndian(span),
        };

        // A length can never exceed what is left: checking here keeps a corrupt one from allocating.
        if (length > (ulong)(_data.Length - _position))
        {
            throw Truncated();
        }
        return (int)length;
    }

    private byte ReadByte() => _position < _data.Length ? _data[_position++] : throw Truncated();

    private ReadOnlySpan<byte> ReadSpan(int length)
    {
        if (length > _data.Length - _position)
        {
            throw Truncated();
        }
        var span = _data.AsSpan(_position, length);
        _position += length;
        return span;
    }

    private void Push(object? value) => _stack.Add(value);

    private object? Pop()
    {
        if (_stack.Count == 0)
        {
            throw Corrupt("an opcode needs a value and the stack is empty");
        }
        var value = _stack[^1];
        _stack.RemoveAt(_stack.Count - 1);
        return value;
    }

    private object?[] PopMany(int count)
    {
        if (_stack.Count < count)
        {
            throw Corrupt($"an opcode needs {count} values and the stack has {_stack.Count}");
        }
        var values = _stack.GetRange(_stack.Count - count, count).ToArray();
        _stack.RemoveRange(_stack.Count - count, count);
        return values;
    }

    private object? Peek() => _stack.Count > 0 ? _stack[^1] : throw Corrupt("an opcode needs a value and the stack is empty");

    private T PeekAs<T>(string opcode)
        where T : class =>
        Peek() as T ?? throw Corrupt($"{opcode} applies to {Describe(Peek())}, which is not supported");

    private List<object?> PopMark()
    {
        if (_marks.Count == 0)
        {
            throw Corrupt("an opcode needs a MARK and there is none");
        }
        var items = _stack;
        _stack = _marks.Pop();
        return items;
    }

    private void Memoize(long index) => _memo[index] = Peek();

    private object? Recall(long index) =>
        _memo.TryGetValue(index, out var value) ? value : throw Corrupt($"memo entry {index} is read before it is written");

    private WeightsFileException Truncated() =>
        new(_filePath, $"the pickle (data.pkl) ends in the middle of an opcode at byte {_opcodeStart}: it is truncated or corrupt");

    private WeightsFileException Corrupt(string problem, Exception? inner = null) =>
        new(_filePath, $"the pickle (data.pkl) is not a state_dict we can read: {problem} (at byte {_opcodeStart})", inner);

    private static string Describe(object? value) => value switch
    {
        null => "None",
        string => "a string",
        long or BigInteger => "an integer",
        double => "a float",
        bool => "a boolean",
        byte[] => "bytes",
        PickleTuple tuple => $"a tuple of {tuple.Count}",
        List<object?> => "a list",
        PickleDict => "a dict",
        PickleGlobal global => global.ToString(),
        PickledStorage => "a storage",
        PickledTensor => "a tensor",
        _ => value.GetType().Name,
    };

    private static string Printable(byte opcode) =>
        opcode is >= 0x20 and < 0x7f ? $"'{(char)opcode}'" : "not printable";

    private static string Printable(string text) =>
        string.Concat(text.Select(c => char.IsControl(c) ? string.Create(CultureInfo.InvariantCulture, $"\\u{(int)c:x4}") : c.ToString()));
}
