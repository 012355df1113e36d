using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Training;

/// <summary>
/// Varies a batch of preprocessed images, drawing every random number from the trial's generator (so a resumed trial
/// augments exactly as an uninterrupted one). The crop is taken from the normalised image and resized back to its side
/// bilinearly, as torchvision's RandomResizedCrop does on the decoded one; the flip mirrors the width.
/// </summary>
public static class ImageAugmenter
{
    private const double MinArea = 0.25;
    private const double MaxArea = 1.0;
    private static readonly double s_logMinRatio = Math.Log(3.0 / 4.0);
    private static readonly double s_logMaxRatio = Math.Log(4.0 / 3.0);

    public static Tensor Apply(Tensor images, Augmentation augmentation, Generator generator)
    {
        ArgumentNullException.ThrowIfNull(images);
        if (augmentation == Augmentation.None)
        {
            return images.alias();
        }
        using var scope = NewDisposeScope();
        Tensor result = augmentation == Augmentation.CropFlip ? RandomResizedCrop(images, generator) : images;
        long n = result.shape[0];
        Tensor flip = rand(n, generator: generator).lt(0.5);
        result = where(flip.view(n, 1, 1, 1), result.flip(3), result);
        return result.MoveToOuterDisposeScope();
    }

    private static Tensor RandomResizedCrop(Tensor images, Generator generator)
    {
        long n = images.shape[0];
        long height = images.shape[2];
        long width = images.shape[3];
        // Four uniform draws per image: area, aspect, and the corner's place.
        float[] draws = rand(n, 4, generator: generator).data<float>().ToArray();
        var crops = new Tensor[n];
        for (long i = 0; i < n; i++)
        {
            double area = (MinArea + (MaxArea - MinArea) * draws[i * 4]) * height * width;
            double ratio = Math.Exp(s_logMinRatio + (s_logMaxRatio - s_logMinRatio) * draws[i * 4 + 1]);
            long w = Math.Clamp((long)Math.Round(Math.Sqrt(area * ratio)), 1, width);
            long h = Math.Clamp((long)Math.Round(Math.Sqrt(area / ratio)), 1, height);
            long top = (long)Math.Floor(draws[i * 4 + 2] * (height - h + 1));
            long left = (long)Math.Floor(draws[i * 4 + 3] * (width - w + 1));
            Tensor crop = images.narrow(0, i, 1).narrow(2, Math.Min(top, height - h), h).narrow(3, Math.Min(left, width - w), w);
            crops[i] = nn.functional.interpolate(crop, [height, width], mode: InterpolationMode.Bilinear, align_corners: false);
        }
        return cat(crops, 0);
    }
}
