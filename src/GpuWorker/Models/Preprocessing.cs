using System.Globalization;
using Cluster.GpuWorker.Images;

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

    /// <summary>
    /// The same preprocessing for a <paramref name="inputSize"/>-pixel square input instead of this one's
    /// (<c>this</c> when the sizes are equal): the same normalisation and colour order, <see cref="ResizeTo"/> scaled by
    /// the same ratio (so the crop frames the same part of the image), a <see cref="Name"/> that says the size (names go
    /// into feature-set keys), and a <see cref="MeanImage"/> resampled to the new size with the decoder's antialiased
    /// bilinear filter. Call it on the native preprocessing: resampling a resampled mean image compounds the blur.
    /// </summary>
    public Preprocessing AtSize(int inputSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(inputSize, 1);
        if (inputSize == InputSize)
        {
            return this;
        }
        // Rounded as ImageNet(size) rounds, so both give the same ResizeTo for the same size.
        int resizeTo = (int)Math.Round(inputSize * (double)ResizeTo / InputSize);
        float[]? meanImage = MeanImage is null
            ? null
            : BilinearResampler.ResizePlanes(MeanImage, MeanImage.Length / (InputSize * InputSize), InputSize, InputSize, inputSize, inputSize);
        return this with { Name = NameAtSize(inputSize), InputSize = inputSize, ResizeTo = Math.Max(resizeTo, inputSize), MeanImage = meanImage };
    }

    /// <summary>
    /// The name with its size suffix ("-224") replaced by the new size, so that <c>ImageNet().AtSize(299)</c> and
    /// <c>ImageNet(299)</c>, which hold the same values, share one name (and one feature-set key); a name without the
    /// suffix gets the new size appended.
    /// </summary>
    private string NameAtSize(int inputSize)
    {
        string suffix = "-" + InputSize.ToString(CultureInfo.InvariantCulture);
        string stem = Name.EndsWith(suffix, StringComparison.Ordinal) ? Name[..^suffix.Length] : Name;
        return $"{stem}-{inputSize.ToString(CultureInfo.InvariantCulture)}";
    }
}
