using Microsoft.ML.OnnxRuntime;

namespace Cluster.GpuWorker.Tests.Onnx;

/// <summary>Runs a model in ONNX Runtime, the reference implementation our import is compared with.</summary>
internal static class OnnxRuntimeReference
{
    public sealed record Result(float[] Values, long[] Shape);

    /// <summary>
    /// Graph optimisations are off: fusions such as Conv+BatchNorm change the arithmetic slightly, and the point is
    /// to compare against ONNX semantics as written.
    /// </summary>
    public static Result Run(byte[] model, string inputName, float[] input, long[] shape, string? outputName = null) =>
        RunMany(model, inputName, input, shape, outputName is null ? null : [outputName]).Values.First();

    public static IReadOnlyDictionary<string, Result> RunMany(byte[] model, string inputName, float[] input, long[] shape, string[]? outputNames)
    {
        using var options = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_DISABLE_ALL };
        using var session = new InferenceSession(model, options);
        string[] outputs = outputNames ?? [session.OutputNames[0]];
        using OrtValue ortInput = OrtValue.CreateTensorValueFromMemory(input, shape);
        using var runOptions = new RunOptions();
        using IDisposableReadOnlyCollection<OrtValue> results = session.Run(runOptions, [inputName], [ortInput], outputs);
        var byName = new Dictionary<string, Result>(StringComparer.Ordinal);
        for (int i = 0; i < outputs.Length; i++)
        {
            OrtValue value = results[i];
            byName[outputs[i]] = new Result(value.GetTensorDataAsSpan<float>().ToArray(), value.GetTensorTypeAndShape().Shape);
        }
        return byName;
    }
}
