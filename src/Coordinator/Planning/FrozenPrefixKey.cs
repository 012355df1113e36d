using System.Security.Cryptography;
using System.Text;

namespace Cluster.Coordinator.Planning;

/// <summary>
/// The identity of a frozen prefix's output: everything that determines the activations at a tap. Two requests
/// (extractions, or sweep trials differing only after the cutoff) with the same key share one feature set.
/// </summary>
/// <param name="Layer">The canonical step name (aliases resolved), so `block5_pool` and `features.36` share a key.</param>
/// <param name="Preprocessing">The preprocessing's name, which includes its input size (`...-64`).</param>
/// <param name="StorageDtype">How the activations are stored (fp32, bf16, fp16): rounded values are other values.</param>
/// <param name="Scope">Null for a set anyone may reuse; a trial's id for a set only that trial uses (`sweep run --no-share`,
/// which computes every trial's prefix itself, as sweep systems without sharing do, for comparison).</param>
public sealed record FrozenPrefixKey(
    string Model, string WeightsHash, string Layer, string Pooling, string Preprocessing, string Precision, string DatasetId,
    string StorageDtype = "fp32", string? Scope = null)
{
    /// <summary>Readable and unique: `resnet18.avgpool.3f9a0c1d2e4b5a69c7d8`.</summary>
    public string Value
    {
        get
        {
            string canonical = string.Join('\n', "v1", Model, WeightsHash, Layer, Pooling, Preprocessing, Precision, DatasetId);
            // The storage dtype is appended only when it is not fp32, so every float32 set extracted before the field
            // existed keeps its key (and stays in the cache); a bf16 or fp16 set gets a key of its own.
            if (StorageDtype != "fp32")
            {
                canonical += "\nstorage:" + StorageDtype;
            }
            if (Scope is not null)
            {
                canonical += "\nscope:" + Scope;
            }
            string hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(canonical)))[..20];
            return $"{Model}.{Layer}.{hash}";
        }
    }

    public override string ToString() => Value;
}
