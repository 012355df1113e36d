using Cluster.GpuWorker.Images;
using Shouldly;

namespace Cluster.GpuWorker.Tests.Images;

public sealed class BatchLayoutTests
{
    [Theory]
    [InlineData(1000, 32, 1, "32x31 8")] // plain batches
    [InlineData(1000, 32, 2, "32x30 20x2")] // the last 40 shared by two lanes
    [InlineData(65, 32, 2, "32 17 16")]
    [InlineData(64, 32, 2, "32x2")]
    [InlineData(10, 32, 2, "5x2")]
    [InlineData(10, 32, 4, "3x2 2x2")]
    [InlineData(2, 32, 4, "1x2")]
    [InlineData(100, 7, 3, "7x12 6 5x2")]
    [InlineData(0, 32, 2, "")]
    public void The_tail_is_shared_out_in_near_equal_batches(int count, int batchSize, int tail, string expected)
    {
        var layout = new BatchLayout(count, batchSize, tail);

        int[] sizes = Enumerable.Range(0, layout.Batches).Select(layout.Size).ToArray();

        // "32x30 20x2": thirty batches of 32, then two of 20.
        int[] want = expected.Split(' ', StringSplitOptions.RemoveEmptyEntries)
            .SelectMany(run => run.Split('x') is [var size, var times] ? Enumerable.Repeat(int.Parse(size), int.Parse(times)) : [int.Parse(run)])
            .ToArray();
        sizes.ShouldBe(want);
    }

    [Fact]
    public void Every_image_falls_in_exactly_one_batch_in_order_for_every_shape()
    {
        for (int count = 0; count <= 140; count++)
        {
            foreach (int batchSize in new[] { 1, 3, 8, 32 })
            {
                foreach (int tail in new[] { 1, 2, 3, 4 })
                {
                    var layout = new BatchLayout(count, batchSize, tail);
                    string shape = $"count {count}, batch {batchSize}, tail {tail}";
                    int image = 0;
                    for (int batch = 0; batch < layout.Batches; batch++)
                    {
                        layout.Start(batch).ShouldBe(image, shape);
                        layout.Size(batch).ShouldBeInRange(1, batchSize, shape);
                        for (int i = 0; i < layout.Size(batch); i++, image++)
                        {
                            layout.BatchOf(image).ShouldBe(batch, $"{shape}, image {image}");
                        }
                    }
                    image.ShouldBe(count, shape);
                    layout.Start(layout.Batches).ShouldBe(count, shape);

                    // Only the last `tail` batches may be short, and they differ by one image at most.
                    int[] sizes = Enumerable.Range(0, layout.Batches).Select(layout.Size).ToArray();
                    sizes.SkipLast(tail).ShouldAllBe(s => s == batchSize, shape);
                    if (sizes.Length > 0)
                    {
                        int[] last = sizes.TakeLast(tail).ToArray();
                        (last.Max() - last.Min()).ShouldBeLessThanOrEqualTo(1, shape);
                    }
                }
            }
        }
    }
}
