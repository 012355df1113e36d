using Cluster.GpuWorker.Hosting;
using Shouldly;

namespace Cluster.GpuWorker.Tests;

public sealed class JobTrackerTests
{
    [Fact]
    public void Current_job_is_set_while_the_job_runs_and_cleared_after()
    {
        var jobs = new JobTracker();
        jobs.CurrentJob.ShouldBeNull();

        using (jobs.Begin("selftest/1"))
        {
            jobs.ReportThroughput(42.5);
            jobs.CurrentJob.ShouldBe("selftest/1");
            jobs.ImagesPerSecond.ShouldBe(42.5);
        }

        jobs.CurrentJob.ShouldBeNull();
        jobs.ImagesPerSecond.ShouldBeNull();
    }

    [Fact]
    public void Ending_an_earlier_job_does_not_clear_a_later_one()
    {
        var jobs = new JobTracker();
        IDisposable first = jobs.Begin("a");
        using IDisposable second = jobs.Begin("b");

        first.Dispose();

        jobs.CurrentJob.ShouldBe("b");
    }
}
