using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Weights;

/// <summary>
/// Copies weights into a module's parameters and persistent buffers (BatchNorm's running_mean, running_var and
/// num_batches_tracked included), matching by state_dict key and checking shapes and dtypes first.
/// </summary>
/// <remarks>
/// Dtype rule: a shape difference is always a mismatch. Floating-point dtypes convert into one another
/// (float64 weights into a float32 module is the everyday case), and integers convert into wider integers;
/// each conversion is listed in the report's notes. Anything else (float into integer, narrowing integers,
/// bool) is a mismatch, because it would silently change values.
/// </remarks>
public static class WeightsLoader
{
    /// <summary>
    /// Loads <paramref name="weights"/> into <paramref name="module"/>. Strict (the default): any missing,
    /// unexpected or mismatched key throws a <see cref="WeightsMismatchException"/> whose message is the diff,
    /// and the module is left untouched. Not strict: every tensor that matches is copied, and the report says
    /// what did not.
    /// </summary>
    public static WeightsLoadReport Apply(nn.Module module, IReadOnlyDictionary<string, Tensor> weights, bool strict = true) =>
        Apply(module, weights, strict, source: null, notes: []);

    /// <summary>
    /// Like <see cref="Apply(nn.Module, IReadOnlyDictionary{string, Tensor}, bool)"/>, with the file's name
    /// and loading notes (a stripped "module." prefix, a checkpoint entry used) carried into the report.
    /// </summary>
    public static WeightsLoadReport Apply(nn.Module module, StateDict weights, bool strict = true)
    {
        ArgumentNullException.ThrowIfNull(weights);
        return Apply(module, weights, strict, weights.Source, weights.Notes);
    }

    private static WeightsLoadReport Apply(
        nn.Module module,
        IReadOnlyDictionary<string, Tensor> weights,
        bool strict,
        string? source,
        IReadOnlyList<string> notes)
    {
        ArgumentNullException.ThrowIfNull(module);
        ArgumentNullException.ThrowIfNull(weights);

        var targets = module.state_dict();
        var missing = targets.Keys.Where(key => !weights.ContainsKey(key)).Order(StringComparer.Ordinal).ToList();
        var unexpected = weights.Keys.Where(key => !targets.ContainsKey(key)).Order(StringComparer.Ordinal).ToList();
        var mismatched = new List<TensorMismatch>();
        var copies = new List<(Tensor Target, Tensor Source)>();
        var conversions = new SortedDictionary<string, List<string>>(StringComparer.Ordinal);

        foreach (var key in targets.Keys.Where(weights.ContainsKey).Order(StringComparer.Ordinal))
        {
            var target = targets[key];
            var value = weights[key];
            if (!target.shape.SequenceEqual(value.shape) || !CanConvert(value.dtype, target.dtype))
            {
                mismatched.Add(new TensorMismatch(key, target.shape, target.dtype, value.shape, value.dtype));
                continue;
            }

            if (value.dtype != target.dtype)
            {
                var conversion = $"{TensorBytes.Name(value.dtype)} to {TensorBytes.Name(target.dtype)}";
                if (!conversions.TryGetValue(conversion, out var keys))
                {
                    conversions[conversion] = keys = [];
                }
                keys.Add(key);
            }
            copies.Add((target, value));
        }

        var refused = strict && (missing.Count > 0 || unexpected.Count > 0 || mismatched.Count > 0);
        var allNotes = notes.Concat(conversions.Select(pair => DescribeConversion(pair.Key, pair.Value)));
        var report = new WeightsLoadReport
        {
            Source = source,
            Missing = missing,
            Unexpected = unexpected,
            Mismatched = mismatched,
            Loaded = refused ? 0 : copies.Count,
            Notes = allNotes.ToList(),
            MissingDetails = missing.ToDictionary(key => key, key => ((IReadOnlyList<long>)targets[key].shape, targets[key].dtype)),
            UnexpectedDetails = unexpected.ToDictionary(key => key, key => ((IReadOnlyList<long>)weights[key].shape, weights[key].dtype)),
        };
        if (refused)
        {
            throw new WeightsMismatchException(report);
        }

        // Parameters are leaves that require grad; writing into them in place is only allowed without autograd.
        using (no_grad())
        {
            foreach (var (target, value) in copies)
            {
                // copy_ converts dtype and moves across devices; the target keeps its own dtype and device.
                target.copy_(value);
            }
        }
        return report;
    }

    private static string DescribeConversion(string conversion, List<string> keys)
    {
        var listed = string.Join(", ", keys.Take(5)) + (keys.Count > 5 ? $" and {keys.Count - 5} more" : "");
        return $"{keys.Count} {(keys.Count == 1 ? "tensor" : "tensors")} converted from {conversion}: {listed}.";
    }

    private static bool CanConvert(ScalarType from, ScalarType to)
    {
        if (from == to)
        {
            return true;
        }
        if (TensorBytes.IsFloatingPoint(from) && TensorBytes.IsFloatingPoint(to))
        {
            return true;
        }

        // Widening only: every value of the source fits in the target.
        return (from, to) switch
        {
            (ScalarType.Byte, ScalarType.Int16 or ScalarType.Int32 or ScalarType.Int64) => true,
            (ScalarType.Int8, ScalarType.Int16 or ScalarType.Int32 or ScalarType.Int64) => true,
            (ScalarType.Int16, ScalarType.Int32 or ScalarType.Int64) => true,
            (ScalarType.Int32, ScalarType.Int64) => true,
            _ => false,
        };
    }
}
