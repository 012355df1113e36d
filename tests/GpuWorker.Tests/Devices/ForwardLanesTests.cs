using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Models;
using Shouldly;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Tests.Devices;

public sealed class ForwardLanesTests
{
    public ForwardLanesTests() => TorchRuntime.Initialize();

    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(2, 2, 1)]
    [InlineData(4, 2, 2)]
    [InlineData(8, 2, 4)]
    [InlineData(16, 4, 4)]
    [InlineData(64, 4, 16)]
    public void The_default_layout_shares_the_cores_among_few_lanes(int cores, int lanes, int threads)
    {
        LaneLayout.For(TorchDevice.Cpu, cores: cores).ShouldBe(new LaneLayout(lanes, threads));
    }

    [Fact]
    public void Explicit_lanes_and_threads_win_and_the_missing_one_is_derived()
    {
        LaneLayout.For(TorchDevice.Cpu, lanes: 3, cores: 12).ShouldBe(new LaneLayout(3, 4));
        LaneLayout.For(TorchDevice.Cpu, threadsPerLane: 5, cores: 2).ShouldBe(new LaneLayout(2, 5));
        LaneLayout.For(TorchDevice.Cpu, lanes: 1, threadsPerLane: 1, cores: 16).ShouldBe(new LaneLayout(1, 1));
    }

    [Fact]
    public async Task Lanes_run_concurrently_on_their_own_thread_counts_and_leave_the_process_default_alone()
    {
        int before = torch.get_num_threads();
        int perLane = before == 1 ? 2 : 1;
        using var lanes = new ForwardLanes(new LaneLayout(2, perLane));
        torch.get_num_threads().ShouldBe(before);
        int onFreshThread = 0;
        var fresh = new Thread(() => onFreshThread = torch.get_num_threads());
        fresh.Start();
        fresh.Join();
        onFreshThread.ShouldBe(before);

        // Each work item waits for the other at a barrier: both finish only if the two lanes run at once.
        using var barrier = new Barrier(2);
        Task<(bool Met, int Threads, int ThreadId)>[] work = Enumerable.Range(0, 2).Select(_ => lanes.RunAsync(() =>
        {
            bool met = barrier.SignalAndWait(TimeSpan.FromSeconds(60));
            // A real libtorch operation first: a thread's count must survive its lazy initialisation.
            using Tensor sum = ones(64, 64).matmul(ones(64, 64)).sum();
            return (met, torch.get_num_threads(), Environment.CurrentManagedThreadId);
        })).ToArray();
        var results = await Task.WhenAll(work).WaitAsync(TimeSpan.FromSeconds(120));

        results.ShouldAllBe(r => r.Met);
        results.ShouldAllBe(r => r.Threads == perLane);
        results.Select(r => r.ThreadId).Distinct().Count().ShouldBe(2);
    }

    [Fact]
    public async Task A_failing_work_item_faults_its_task_and_the_lane_goes_on()
    {
        using var lanes = new ForwardLanes(new LaneLayout(1, 1));

        var failure = await Should.ThrowAsync<InvalidOperationException>(() => lanes.RunAsync(() => throw new InvalidOperationException("bad batch")));
        failure.Message.ShouldBe("bad batch");
        (await lanes.RunAsync(() => 6 * 7)).ShouldBe(42);
    }

    [Fact]
    public async Task A_backbone_gives_the_same_features_on_lanes_as_on_the_calling_thread()
    {
        using Backbone model = ModelCatalog.Find("resnet18").Build();
        model.eval();
        using Tensor input = randn([2, 3, 64, 64], generator: new Generator(seed: 3));
        Tensor Forward()
        {
            using var noGrad = no_grad();
            return model.ForwardTo(input, "avgpool");
        }
        using Tensor expected = Forward();
        using var lanes = new ForwardLanes(new LaneLayout(2, 1));

        Tensor[] results = await Task.WhenAll(lanes.RunAsync(Forward), lanes.RunAsync(Forward));

        foreach (Tensor result in results)
        {
            using (result)
            {
                result.allclose(expected, rtol: 1e-4, atol: 1e-5).ShouldBeTrue();
            }
        }
    }
}
