using Cluster.GpuWorker.Images;
using Cluster.GpuWorker.Models;
using Shouldly;

namespace Cluster.GpuWorker.Tests.Models;

public sealed class PreprocessingAtSizeTests
{
    [Fact]
    public void The_native_size_returns_the_same_preprocessing()
    {
        Preprocessing imageNet = Preprocessing.ImageNet();

        imageNet.AtSize(224).ShouldBeSameAs(imageNet);
    }

    [Fact]
    public void ImageNet_at_another_size_keeps_its_normalisation_and_its_resize_ratio_and_names_the_size()
    {
        Preprocessing at299 = Preprocessing.ImageNet().AtSize(299);

        // The same values as the catalog's own 299 preprocessing (inception_v3), so the same name too.
        Preprocessing catalog = Preprocessing.ImageNet(299);
        at299.Name.ShouldBe(catalog.Name);
        at299.InputSize.ShouldBe(299);
        at299.ResizeTo.ShouldBe(catalog.ResizeTo);
        at299.Mean.ShouldBe(catalog.Mean);
        at299.Std.ShouldBe(catalog.Std);
        Preprocessing at64 = Preprocessing.ImageNet().AtSize(64);
        at64.ResizeTo.ShouldBe(73, "64 x 256/224 = 73.1");
        at64.Name.ShouldBe("imagenet-rgb-64");
    }

    [Fact]
    public void The_resnet18_imagenet_mean_image_is_resampled_to_3x64x64_and_its_name_says_the_size()
    {
        Preprocessing native = BuiltInModels.LoadPreprocessing(BuiltInModels.ResNet18ImageNet);

        Preprocessing at64 = native.AtSize(64);

        at64.InputSize.ShouldBe(64);
        at64.ResizeTo.ShouldBe(64, "this model's crop is the whole resized square at every size");
        at64.Order.ShouldBe(ColorOrder.Bgr);
        at64.Scale.ShouldBe(1f);
        at64.MeanImage!.Length.ShouldBe(3 * 64 * 64);
        at64.Name.ShouldNotBe(native.Name);
        at64.Name.ShouldEndWith("-64");
        at64.Name[..^3].ShouldBe(native.Name[..^4], "only the size differs: the digest of the mean image stays");
        // An average of a smooth image survives resampling: each channel's mean stays where it was (B 103.1, G 115.9, R 123.2).
        for (int c = 0; c < 3; c++)
        {
            double before = native.MeanImage!.Skip(c * 224 * 224).Take(224 * 224).Average();
            double after = at64.MeanImage.Skip(c * 64 * 64).Take(64 * 64).Average();
            after.ShouldBe(before, 0.5);
        }
    }

    [Fact]
    public void A_constant_mean_image_stays_constant_when_resampled()
    {
        float[] constant = new float[3 * 224 * 224];
        for (int c = 0; c < 3; c++)
        {
            Array.Fill(constant, 100f + (10f * c), c * 224 * 224, 224 * 224);
        }
        var preprocessing = new Preprocessing("constant-mean-224", 224, 224, ColorOrder.Bgr, 1f, [0f, 0f, 0f], [1f, 1f, 1f], constant);

        float[] resampled = preprocessing.AtSize(64).MeanImage!;

        resampled.Length.ShouldBe(3 * 64 * 64);
        for (int c = 0; c < 3; c++)
        {
            resampled.Skip(c * 64 * 64).Take(64 * 64).ShouldAllBe(v => Math.Abs(v - (100f + (10f * c))) < 1e-4f);
        }
    }

    [Fact]
    public void The_float_resampler_applies_the_same_filter_as_the_byte_resampler_the_decoder_uses()
    {
        // A 90x90 plane of byte values: the byte path rounds after each pass, the float path does not, so they agree
        // to within one level, which they would not if the float path used another filter or no antialiasing.
        const int From = 90, To = 32;
        var random = new Random(5);
        byte[] rgba = new byte[From * From * 4];
        random.NextBytes(rgba);
        float[] planes = new float[3 * From * From];
        for (int i = 0; i < From * From; i++)
        {
            for (int c = 0; c < 3; c++)
            {
                planes[(c * From * From) + i] = rgba[(i * 4) + c];
            }
        }
        byte[] resized = new byte[To * To * 4];
        new BilinearResampler().ResizeCrop(rgba, From, From, To, To, 0, 0, To, resized);

        float[] floats = BilinearResampler.ResizePlanes(planes, 3, From, From, To, To);

        for (int i = 0; i < To * To; i++)
        {
            for (int c = 0; c < 3; c++)
            {
                Math.Abs(floats[(c * To * To) + i] - resized[(i * 4) + c]).ShouldBeLessThanOrEqualTo(1.01f);
            }
        }
    }
}
