using Cluster.Contracts;
using Cluster.Contracts.Training;
using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Hosting;
using Cluster.GpuWorker.Training;
using MassTransit;
using MassTransit.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Shouldly;

namespace Cluster.GpuWorker.Tests.Training;

/// <summary>
/// A directed segment that reaches a busy worker is passed on to the shared queue at once (marked, so its taker checks
/// whether it is recorded), rather than wait behind the job running; the lanes keep both queues to one job at a time.
/// </summary>
public sealed class DirectedSegmentConsumerTests
{
    private static TrainSegment Segment() => new()
    {
        SweepId = Guid.NewGuid(), TrialId = Guid.NewGuid(), Segment = 2, EpochFrom = 2, EpochTo = 3, IsLast = false,
        Settings = new TrialSettings
        {
            Model = "resnet18", Weights = "random", WeightsHash = "h", InputSize = 32, Strategy = "fine-tune-top", Lr = 0.01, Optimizer = "sgd",
            Epochs = 4, BatchSize = 8,
        },
        Data = new TrialData { TrainDatasetId = "train", ClassNames = ["a", "b"], CutoffFeatures = new Dictionary<string, string> { ["train"] = "layer3" } },
    };

    [Fact]
    public async Task A_busy_worker_passes_a_directed_segment_on_to_the_shared_queue() =>
        await ShouldPassOnAsync(Segment(), busy: true);

    [Fact]
    public async Task A_directed_segment_of_a_contract_version_this_worker_does_not_read_is_passed_on_where_it_is_refused_into_the_watched_error_queue() =>
        // The lane is free, yet the segment does not run here: this queue's error queue is watched by nobody.
        await ShouldPassOnAsync(Segment() with { Version = ContractVersion.Current + 1 }, busy: false,
            why: $"does not read its contract version {ContractVersion.Current + 1}");

    private static async Task ShouldPassOnAsync(TrainSegment segment, bool busy, string why = "is busy")
    {
        var lanes = new JobLanes(1);
        var logs = new LogLines();
        await using ServiceProvider provider = new ServiceCollection()
            .AddLogging(l => l.AddProvider(logs))
            .AddSingleton(lanes)
            .AddSingleton(WorkerIdentity.Create("busy-worker", TorchDevice.Cpu, directQueue: true))
            .AddMassTransitTestHarness(x => x.AddConsumer<DirectedSegmentConsumer>())
            .Configure<TestHarnessOptions>(o =>
            {
                o.TestTimeout = TimeSpan.FromMinutes(3);
                o.TestInactivityTimeout = TimeSpan.FromMinutes(1);
            })
            .BuildServiceProvider(true);
        ITestHarness harness = provider.GetRequiredService<ITestHarness>();
        await harness.Start();
        try
        {
            // The one lane taken by a job from the shared queue, or free.
            using IDisposable? running = busy ? lanes.TryTake().ShouldNotBeNull() : null;
            IConsumerTestHarness<DirectedSegmentConsumer> consumer = harness.GetConsumerHarness<DirectedSegmentConsumer>();
            ISendEndpoint own = await harness.GetConsumerEndpoint<DirectedSegmentConsumer>();
            await own.Send(segment);

            (await consumer.Consumed.Any<TrainSegment>()).ShouldBeTrue();
            ISentMessage<TrainSegment> passedOn = (await harness.Sent.SelectAsync<TrainSegment>(m => m.Context.DestinationAddress!.AbsolutePath.EndsWith($"/{QueueNames.GpuWork}", StringComparison.Ordinal))
                .FirstOrDefault()).ShouldNotBeNull("passed on to the shared queue");
            (passedOn.Context.Message.TrialId, passedOn.Context.Message.Segment).ShouldBe((segment.TrialId, segment.Segment));
            passedOn.Context.Headers.Get<string>(DirectedSegmentConsumer.PassedOnHeader).ShouldBe("busy-worker");
            (await consumer.Consumed.SelectAsync<TrainSegment>().First()).Exception.ShouldBeNull("passed on, not failed: the delivery is acknowledged");
            // Passed on for the reason, without trying it here first.
            logs.Lines.ShouldContain(l => l.Contains(why, StringComparison.Ordinal));
            logs.Lines.ShouldNotContain(l => l.Contains("failed here", StringComparison.Ordinal));
        }
        finally
        {
            await harness.Stop();
        }
    }

    [Fact]
    public async Task Lanes_give_one_job_at_a_time_and_a_waiter_gets_the_lane_when_it_is_released()
    {
        using var lanes = new JobLanes(1);
        IDisposable first = lanes.TryTake().ShouldNotBeNull();
        lanes.TryTake().ShouldBeNull();
        Task<IDisposable> waiting = lanes.TakeAsync(CancellationToken.None);
        waiting.IsCompleted.ShouldBeFalse();
        first.Dispose();
        first.Dispose(); // twice releases once
        using IDisposable second = await waiting.WaitAsync(TimeSpan.FromSeconds(30));
        lanes.TryTake().ShouldBeNull("released twice, freed once");
    }
}
