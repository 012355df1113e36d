using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Kernels;

/// <summary>
/// The closed-form weights of Fixtures/make_feature_fixtures.py, computed the same way (float64, then rounded to
/// float32), so both sides hold bit-identical weights without a weight file in the repository.
/// </summary>
internal static class ClosedFormWeights
{
    private static readonly string[] s_classifierPrefixes = ["fc.", "classifier.", "AuxLogits."];

    /// <summary>Fills every tensor of <paramref name="model"/>; returns the SHA-256 the fixture script records.</summary>
    public static string Fill(nn.Module model)
    {
        Dictionary<string, Tensor> state = model.state_dict();
        var batchNorms = state.Keys.Where(k => k.EndsWith(".running_mean", StringComparison.Ordinal))
            .Select(k => k[..^".running_mean".Length]).ToHashSet(StringComparer.Ordinal);
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        using var noGrad = no_grad();
        foreach (string key in state.Keys.Order(StringComparer.Ordinal))
        {
            Tensor target = state[key];
            if (key.EndsWith(".num_batches_tracked", StringComparison.Ordinal))
            {
                target.zero_();
                continue;
            }
            float[] values = Values(key, target.shape, batchNorms.Contains(key[..key.LastIndexOf('.')]));
            using (Tensor source = tensor(values, target.shape))
            {
                target.copy_(source);
            }
            if (!s_classifierPrefixes.Any(p => key.StartsWith(p, StringComparison.Ordinal)))
            {
                sha.AppendData(MemoryMarshal.AsBytes(values.AsSpan()));
            }
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    internal static float[] Values(string name, long[] shape, bool isBatchNorm)
    {
        long count = shape.Aggregate(1L, (a, b) => a * b);
        uint hash = Fnv1a(name);
        string leaf = name[(name.LastIndexOf('.') + 1)..];
        long fanIn = shape.Skip(1).Aggregate(1L, (a, b) => a * b);
        var values = new float[count];
        for (long i = 0; i < count; i++)
        {
            double u = (double)(((ulong)i * 2654435761UL + hash) % (1UL << 32)) / 4294967296.0;
            double value = isBatchNorm
                ? leaf switch
                {
                    "weight" => 0.5 + u,
                    "bias" => (2 * u - 1) * 0.1,
                    "running_mean" => (2 * u - 1) * 0.2,
                    "running_var" => 0.5 + u,
                    _ => throw new InvalidDataException($"unexpected batch norm tensor {name}"),
                }
                : leaf == "weight" && shape.Length >= 2 ? (2 * u - 1) * Math.Sqrt(6.0 / fanIn) : (2 * u - 1) * 0.1;
            values[i] = (float)value;
        }
        return values;
    }

    private static uint Fnv1a(string text)
    {
        uint hash = 0x811C9DC5;
        foreach (byte b in Encoding.UTF8.GetBytes(text))
        {
            hash = (hash ^ b) * 0x01000193;
        }
        return hash;
    }
}
