using Cluster.GpuWorker.Extraction;
using Shouldly;

namespace Cluster.GpuWorker.Tests.Extraction;

public sealed class ShardFeaturesTests
{
    [Fact]
    public void Batches_stored_out_of_order_with_skipped_rows_come_out_packed_in_row_order()
    {
        // Rows 100..107; 102 and 105 were skipped by the decoders; the second batch finishes first.
        var shard = new ShardFeatures(rowStart: 100, rowCount: 8);
        shard.Store([104, 106, 107], [2], [40, 41, 60, 61, 70, 71]);
        shard.Store([100, 101, 103], [2], [0, 1, 10, 11, 30, 31]);

        (float[] values, long[] rows, long[] shape) = shard.Compact();

        rows.ShouldBe([100L, 101L, 103L, 104L, 106L, 107L]);
        shape.ShouldBe([2L]);
        values.AsSpan(0, rows.Length * 2).ToArray().ShouldBe([0f, 1, 10, 11, 30, 31, 40, 41, 60, 61, 70, 71]);
    }

    [Fact]
    public void A_shard_whose_images_were_all_skipped_has_no_rows()
    {
        (float[] values, long[] rows, long[] shape) = new ShardFeatures(0, 4).Compact();

        values.ShouldBeEmpty();
        rows.ShouldBeEmpty();
        shape.ShouldBe([0L]);
    }

    [Fact]
    public void Rows_outside_the_shard_and_mismatched_shapes_or_lengths_are_refused()
    {
        var shard = new ShardFeatures(10, 2);
        shard.Store([10], [1, 2], [1, 2]);

        Should.Throw<ArgumentOutOfRangeException>(() => shard.Store([12], [1, 2], [1, 2])).Message.ShouldContain("row 12 is outside [10, 12)");
        Should.Throw<InvalidOperationException>(() => shard.Store([11], [2], [1, 2]));
        Should.Throw<ArgumentException>(() => shard.Store([11], [1, 2], [1, 2, 3]));
    }
}
