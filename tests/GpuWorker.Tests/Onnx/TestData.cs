namespace Cluster.GpuWorker.Tests.Onnx;

internal static class TestData
{
    /// <summary>Seeded standard-normal values (Box-Muller), so every run and both runtimes see the same numbers.</summary>
    public static float[] Normal(int seed, int count)
    {
        var random = new Random(seed);
        var values = new float[count];
        for (int i = 0; i < count; i++)
        {
            double u1 = 1.0 - random.NextDouble();
            double u2 = random.NextDouble();
            values[i] = (float)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2));
        }
        return values;
    }

    /// <summary>max |actual - expected| over max |expected|: the error relative to the values' scale.</summary>
    public static double RelativeMaxError(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
    {
        if (actual.Length != expected.Length)
        {
            throw new ArgumentException($"{actual.Length} values against {expected.Length}");
        }
        double maxDifference = 0;
        double scale = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            maxDifference = Math.Max(maxDifference, Math.Abs((double)actual[i] - expected[i]));
            scale = Math.Max(scale, Math.Abs((double)expected[i]));
        }
        return maxDifference / Math.Max(scale, 1e-12);
    }
}
