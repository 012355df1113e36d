using System.Diagnostics;

namespace Cluster.IntegrationTests.Support;

/// <summary>Waits on conditions, never on sleeps: polls until true, with a generous deadline.</summary>
public static class Eventually
{
    public static Task<T> WaitAsync<T>(Func<Task<T?>> probe, TimeSpan timeout, string what)
        where T : class => WaitAsync(probe, timeout, () => what);

    /// <param name="what">Said when the wait times out, so it can describe the state then (a process's output so far).</param>
    public static async Task<T> WaitAsync<T>(Func<Task<T?>> probe, TimeSpan timeout, Func<string> what)
        where T : class
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            T? value = await probe();
            if (value is not null)
            {
                return value;
            }
            if (clock.Elapsed > timeout)
            {
                throw new TimeoutException($"Timed out after {timeout.TotalSeconds:F0} s waiting for {what()}.");
            }
            await Task.Delay(TimeSpan.FromMilliseconds(200));
        }
    }

    public static async Task WaitAsync(Func<Task<bool>> condition, TimeSpan timeout, string what) =>
        await WaitAsync<object>(async () => await condition() ? new object() : null, timeout, what);

    public static async Task WaitAsync(Func<Task<bool>> condition, TimeSpan timeout, Func<string> what) =>
        await WaitAsync<object>(async () => await condition() ? new object() : null, timeout, what);
}
