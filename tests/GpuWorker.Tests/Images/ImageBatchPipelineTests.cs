using Cluster.GpuWorker.Images;
using Cluster.GpuWorker.Models;
using Cluster.Storage.Datasets;
using Shouldly;
using SkiaSharp;

namespace Cluster.GpuWorker.Tests.Images;

public sealed class ImageBatchPipelineTests : IClassFixture<ImageBatchPipelineTests.ImageFolder>
{
    private const int ImageCount = 300;
    private const long FirstRow = 1000;

    // A plain resize of a one-colour image: every value is exactly the colour, so each image names its row.
    private static readonly Preprocessing s_preprocessing = new("unit-8", 8, 8, ColorOrder.Rgb, 1f, [0f, 0f, 0f], [1f, 1f, 1f]);

    private static readonly Dictionary<int, ImageSkipReason> s_bad = new()
    {
        [5] = ImageSkipReason.Empty,
        [37] = ImageSkipReason.NotAnImage,
        [64] = ImageSkipReason.Missing,
        [200] = ImageSkipReason.Truncated,
        [299] = ImageSkipReason.NotAnImage,
    };

    private readonly string _root;
    private readonly IReadOnlyList<string> _paths;

    public ImageBatchPipelineTests(ImageFolder images)
    {
        _root = images.Root;
        _paths = images.Paths;
    }

    [Fact]
    public async Task Every_good_row_arrives_exactly_once_in_order_and_every_bad_row_is_reported_with_its_reason()
    {
        var pipeline = new ImageBatchPipeline(s_preprocessing, Options(maxBuffers: 3));
        var rows = new List<long>();
        var skipped = new List<SkippedRow>();
        var indexes = new List<long>();

        await foreach (var batch in pipeline.RunAsync(_paths, FirstRow, Timeout()))
        {
            using (batch)
            {
                indexes.Add(batch.Index);
                batch.Count.ShouldBe(32 - batch.Skipped.Count - (batch.Index == 9 ? 20 : 0));
                for (var i = 0; i < batch.Count; i++)
                {
                    var image = batch.Image(i);
                    var row = batch.Rows[i] - FirstRow;
                    image[0].ShouldBe(row % 256, $"red of the image delivered for row {batch.Rows[i]}");
                    image[64].ShouldBe(row / 256);
                    image[(2 * 64) + 63].ShouldBe(7f);
                }

                rows.AddRange(batch.Rows);
                skipped.AddRange(batch.Skipped);

                // A slow consumer: decoding runs ahead only as far as the buffers allow.
                await Task.Delay(5);
            }
        }

        indexes.ShouldBe(Enumerable.Range(0, 10).Select(i => (long)i));
        rows.ShouldBe(Enumerable.Range(0, ImageCount).Where(i => !s_bad.ContainsKey(i)).Select(i => FirstRow + i));
        skipped.Select(s => (s.Row - FirstRow, s.Image.Reason)).ShouldBe(s_bad.Select(b => ((long)b.Key, b.Value)));
        skipped.Select(s => s.Image.Path).ShouldBe(s_bad.Keys.Select(i => _paths[i]));
        pipeline.BuffersCreated.ShouldBeLessThanOrEqualTo(3);
    }

    [Fact]
    public async Task Buffers_are_reused_across_runs_and_never_exceed_the_maximum()
    {
        var pipeline = new ImageBatchPipeline(s_preprocessing, Options(maxBuffers: 2));

        for (var run = 0; run < 3; run++)
        {
            (await ImagesDeliveredAsync(pipeline)).ShouldBe(ImageCount - s_bad.Count);
        }

        pipeline.BuffersCreated.ShouldBeLessThanOrEqualTo(2);
    }

    [Fact]
    public async Task One_buffer_is_enough_to_finish()
    {
        var pipeline = new ImageBatchPipeline(s_preprocessing, Options(maxBuffers: 1) with { BatchSize = 7 });

        var images = await ImagesDeliveredAsync(pipeline);

        images.ShouldBe(ImageCount - s_bad.Count);
        pipeline.BuffersCreated.ShouldBe(1);
    }

    [Fact]
    public async Task Stopping_early_gives_every_buffer_back()
    {
        var pipeline = new ImageBatchPipeline(s_preprocessing, Options(maxBuffers: 3));
        await foreach (var batch in pipeline.RunAsync(_paths, 0, Timeout()))
        {
            batch.Dispose();
            if (batch.Index == 1)
            {
                break;
            }
        }

        // Were any buffer lost, this run would wait for it forever (and time out).
        var images = await ImagesDeliveredAsync(pipeline);

        images.ShouldBe(ImageCount - s_bad.Count);
        pipeline.BuffersCreated.ShouldBeLessThanOrEqualTo(3);
    }

    [Fact]
    public async Task Cancelling_stops_the_run_with_an_operation_cancelled_exception()
    {
        var pipeline = new ImageBatchPipeline(s_preprocessing, Options(maxBuffers: 2));
        using var cancel = new CancellationTokenSource();

        await Should.ThrowAsync<OperationCanceledException>(async () =>
        {
            await foreach (var batch in pipeline.RunAsync(_paths, 0, cancel.Token))
            {
                batch.Dispose();
                await cancel.CancelAsync();
            }
        });
    }

    /// <summary>Runs the pipeline over all paths, disposing each batch at once; the number of images delivered.</summary>
    private async Task<int> ImagesDeliveredAsync(ImageBatchPipeline pipeline)
    {
        var images = 0;
        await foreach (var batch in pipeline.RunAsync(_paths, 0, Timeout()))
        {
            images += batch.Count;
            batch.Dispose();
        }

        return images;
    }

    private ImagePipelineOptions Options(int maxBuffers) => new()
    {
        BatchSize = 32,
        Decoders = 3,
        MaxBuffers = maxBuffers,
        Decoder = new ImageDecoderOptions { Root = _root },
    };

    private static CancellationToken Timeout() => new CancellationTokenSource(TimeSpan.FromMinutes(1)).Token;

    /// <summary>300 one-colour PNGs, red and green naming the row, with the bad rows of <see cref="s_bad"/>; made once per class.</summary>
    public sealed class ImageFolder : IDisposable
    {
        public ImageFolder()
        {
            Root = Path.Combine(Path.GetTempPath(), "image-pipeline-tests-" + Guid.NewGuid().ToString("N"));
            Directory.CreateDirectory(Root);
            var paths = new List<string>();
            for (var i = 0; i < ImageCount; i++)
            {
                var name = $"img-{i:D3}.png";
                paths.Add(name);
                var png = TestImages.Encode(12, 12, (_, _) => new SKColor((byte)(i % 256), (byte)(i / 256), 7));
                byte[]? bytes = i switch
                {
                    5 => [],
                    37 => "\x01\x02 not an image"u8.ToArray(),
                    64 => null,
                    200 => png[..(png.Length / 2)],
                    299 => "some text\n"u8.ToArray(),
                    _ => png,
                };
                if (bytes is not null)
                {
                    File.WriteAllBytes(Path.Combine(Root, name), bytes);
                }
            }

            Paths = paths;
        }

        public string Root { get; }

        public IReadOnlyList<string> Paths { get; }

        public void Dispose() => Directory.Delete(Root, recursive: true);
    }
}
