namespace Cluster.GpuWorker.Models;

public enum ColorOrder
{
    Rgb,
    Bgr,
}

/// <summary>
/// How an image becomes a model's input: a square <see cref="InputSize"/> crop taken after resizing the shorter
/// side to <see cref="ResizeTo"/> (equal sizes: a plain resize), channels in <see cref="Order"/>, pixel values
/// multiplied by <see cref="Scale"/>, then either per-channel (x - mean) / std or, when <see cref="MeanImage"/>
/// is set, a per-pixel mean image subtracted (Caffe/CNTK style). Grayscale images are repeated to three channels.
/// </summary>
/// <param name="Name">Stable identifier; part of a feature set's key, so it changes when any value here changes.</param>
/// <param name="MeanImage">C×H×W floats in <see cref="Order"/>, for models trained with a mean image; else null.</param>
public sealed record Preprocessing(
    string Name,
    int InputSize,
    int ResizeTo,
    ColorOrder Order,
    float Scale,
    float[] Mean,
    float[] Std,
    float[]? MeanImage = null)
{
    /// <summary>torchvision's ImageNet normalisation: RGB in 0..1, mean/std per channel, resize 256 → crop 224.</summary>
    public static Preprocessing ImageNet(int inputSize = 224) => new(
        inputSize == 224 ? "imagenet-rgb-224" : $"imagenet-rgb-{inputSize}",
        inputSize,
        (int)Math.Round(inputSize * 256.0 / 224.0),
        ColorOrder.Rgb,
        1f / 255f,
        [0.485f, 0.456f, 0.406f],
        [0.229f, 0.224f, 0.225f]);
}
