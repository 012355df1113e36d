using Cluster.TestSupport;
using Shouldly;

namespace Cluster.IntegrationTests.Support;

/// <summary>
/// Sets one of the RabbitMQ node's application settings (the `rabbit` application's environment, as rabbitmq.conf
/// would) for the length of a test and puts the old value back when disposed. A setting read when a channel opens
/// applies to channels opened after the change. Only tests in <see cref="ServerFaultsCollection"/>, which runs alone,
/// may change one.
/// </summary>
public sealed class BrokerSetting : IAsyncDisposable
{
    private readonly string _key;
    private readonly string? _previous;

    private BrokerSetting(string key, string? previous)
    {
        _key = key;
        _previous = previous;
    }

    public static async Task<BrokerSetting> SetAsync(string key, long value)
    {
        string current = (await EvalAsync($"application:get_env(rabbit, {key}).")).Trim();
        // "{ok,1800000}" when set, "undefined" when the node uses its built-in default.
        string? previous = current.StartsWith("{ok,", StringComparison.Ordinal) ? current[4..^1] : null;
        await EvalAsync($"application:set_env(rabbit, {key}, {value}).");
        (await EvalAsync($"application:get_env(rabbit, {key}).")).Trim().ShouldBe($"{{ok,{value}}}");
        return new BrokerSetting(key, previous);
    }

    public async ValueTask DisposeAsync() =>
        await EvalAsync(_previous is null ? $"application:unset_env(rabbit, {_key})." : $"application:set_env(rabbit, {_key}, {_previous}).");

    private static async Task<string> EvalAsync(string expression)
    {
        ExternalCommand.Result ctl = await ExternalCommand.RunAsync(TestServers.RabbitMqCtl, ["eval", expression], TimeSpan.FromMinutes(2));
        ctl.ExitCode.ShouldBe(0, $"rabbitmqctl eval '{expression}': {ctl.Error}");
        return ctl.Output;
    }
}
