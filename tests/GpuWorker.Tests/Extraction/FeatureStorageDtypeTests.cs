using Cluster.GpuWorker.Extraction;
using Cluster.Storage.Formats;
using Shouldly;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Extraction;

public sealed class FeatureStorageDtypeTests
{
    /// <summary>Activations of several scales, and the values where rounding is decided: ties both ways, the largest
    /// finite values, values that overflow fp16, subnormals, signed zeros and infinities.</summary>
    private static float[] Values()
    {
        var random = new Random(11);
        var values = new List<float>();
        foreach (double scale in new[] { 1e-6, 1e-2, 1.0, 30.0, 1e4 })
        {
            for (int i = 0; i < 400; i++)
            {
                values.Add((float)(scale * ((random.NextDouble() * 2) - 1)));
            }
        }
        foreach (uint bits in new uint[] { 0x3F808000, 0x3F818000, 0x3F80C000, 0x3F807FFF, 0x7F7FFFFF, 0xFF7FFFFF, 0x00000001, 0x807FFFFF })
        {
            values.Add(BitConverter.UInt32BitsToSingle(bits));
        }
        // fp16: 1 + 2^-11 is a tie (rounds to 1), 1 + 3 * 2^-11 one the other way; 65504 the largest, 65520 overflows.
        values.AddRange([1f + (1f / 2048), 1f + (3f / 2048), 65504f, 65519f, 65520f, -70000f, 6e-8f, 0f, -0f, float.PositiveInfinity, float.NegativeInfinity]);
        return [.. values];
    }

    [Theory]
    [InlineData("bf16")]
    [InlineData("fp16")]
    [InlineData("fp32")]
    public void Encoding_rounds_as_torch_rounds(string name)
    {
        FeatureStorageDtype dtype = FeatureStorageDtype.Parse(name);
        float[] values = Values();

        byte[] ours = dtype.Encode(values);

        using Tensor original = tensor(values);
        using Tensor rounded = original.to(dtype.ScalarType);
        ours.ShouldBe(rounded.bytes.ToArray());
    }

    [Theory]
    [InlineData("bf16")]
    [InlineData("fp16")]
    public void Decoding_widens_exactly_to_what_torch_gives(string name)
    {
        FeatureStorageDtype dtype = FeatureStorageDtype.Parse(name);
        float[] values = Values();
        var widened = new float[values.Length];

        dtype.Decode(dtype.Encode(values), widened);

        using Tensor original = tensor(values);
        using Tensor rounded = original.to(dtype.ScalarType);
        using Tensor back = rounded.to(ScalarType.Float32);
        widened.ShouldBe(back.data<float>().ToArray());
    }

    [Fact]
    public void Each_dtype_has_one_name_per_place_it_is_written()
    {
        FeatureStorageDtype.All.Select(d => (d.Name, d.RecordName, d.Safetensors)).ShouldBe(
        [
            ("fp32", "float32", SafetensorsDtype.F32),
            ("bf16", "bfloat16", SafetensorsDtype.BF16),
            ("fp16", "float16", SafetensorsDtype.F16),
        ]);
        Should.Throw<ArgumentException>(() => FeatureStorageDtype.Parse("int8")).Message.ShouldContain("fp32, bf16, fp16");
    }
}
