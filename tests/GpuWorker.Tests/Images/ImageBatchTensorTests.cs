using Cluster.GpuWorker.Images;
using Shouldly;
using TorchSharp;

namespace Cluster.GpuWorker.Tests.Images;

public sealed class ImageBatchTensorTests
{
    [Fact]
    public void The_tensor_view_holds_the_first_images_in_NCHW_order_and_shares_the_buffer()
    {
        const int Side = 4;
        const int ImageLength = 3 * Side * Side;
        float[] buffer = Enumerable.Range(0, 3 * ImageLength).Select(i => (float)i).ToArray();

        using torch.Tensor view = ImageBatch.View(buffer, count: 2, Side);

        view.shape.ShouldBe([2L, 3, Side, Side]);
        view[1, 2, 3, 1].item<float>().ShouldBe(ImageLength + 2 * Side * Side + 3 * Side + 1);
        // Shared, not copied: a later write to the buffer is what the tensor reads.
        buffer[ImageLength + 5] = -7f;
        view[1, 0, 1, 1].item<float>().ShouldBe(-7f);
    }

    [Fact]
    public void More_images_than_the_buffer_holds_is_refused()
    {
        float[] buffer = new float[3 * 4 * 4];

        Should.Throw<ArgumentOutOfRangeException>(() => ImageBatch.View(buffer, count: 2, side: 4));
    }
}
