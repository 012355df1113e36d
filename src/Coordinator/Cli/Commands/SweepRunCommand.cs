using System.ComponentModel;
using System.Diagnostics;
using Cluster.Coordinator.Orchestration;
using Microsoft.Extensions.Hosting;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

/// <summary>What `sweep run` and `sweep submit` take: a spec, and whether its trials share their frozen prefixes.</summary>
public class SweepSpecSettings : GlobalSettings
{
    [CommandArgument(0, "<SPEC>")]
    [Description("A sweep spec (YAML, DESIGN.md's format; examples/ has several). Every field with one value: one trial.")]
    public string Spec { get; init; } = "";

    [CommandOption("--no-share")]
    [Description("Share no frozen prefix between trials (each computes its own, as Ray Tune or Optuna would): for comparison.")]
    public bool NoShare { get; init; }
}

public sealed class SweepRunSettings : SweepSpecSettings
{
    [CommandOption("--timeout <SECONDS>")]
    [Description("Give up waiting after this long (0: wait until done); the sweep goes on in the service.")]
    [DefaultValue(0)]
    public int TimeoutSeconds { get; init; }
}

/// <summary>
/// `coordinator sweep run SPEC`: checks the spec and its data (every bad value is one line, exit 2, before any work is
/// sent), makes sure of each distinct feature set once, submits the sweep to the coordinator service, follows it with a
/// live table of trials, and ends with the leaderboard (DESIGN.md's results format with `--format json`) and the path of
/// the sweep's HTML report.
/// </summary>
public sealed class SweepRunCommand : AsyncCommand<SweepRunSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, SweepRunSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        PreparedSweep sweep = await SweepLauncher.PrepareAsync(cli, settings.Spec, cancellationToken);
        await cli.RequireBrokerAsync(cancellationToken);
        await cli.RequireDatabaseAsync(cancellationToken);
        using IHost host = cli.BuildHost(coordinatorService: false);
        await host.StartAsync(cancellationToken);
        try
        {
            return await RunAsync(cli, host, sweep, !settings.NoShare, settings, TimeSpan.FromSeconds(settings.TimeoutSeconds), cancellationToken);
        }
        finally
        {
            await host.StopAsync(CancellationToken.None);
        }
    }

    /// <summary>Submits, follows and reports a prepared sweep (also `coordinator demo`'s body). Exit code 0 unless the sweep failed or timed out.</summary>
    public static async Task<int> RunAsync(CliContext cli, IHost host, PreparedSweep sweep, bool share, GlobalSettings settings, TimeSpan timeout, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        bool table = settings.Format == OutputFormat.Table;
        Guid sweepId = await SweepLauncher.SubmitAsync(host, cli, sweep, share, ct);
        if (table)
        {
            AnsiConsole.MarkupLine($"[grey]sweep[/] {sweepId} [grey]submitted: {sweep.Layout.Trials.Count} trial(s), {Markup.Escape(sweep.Spec.Search.Method)} search{(share ? "" : ", --no-share")}[/]");
        }
        bool ended;
        try
        {
            ended = await SweepBoard.FollowAsync(cli.Database, sweepId, timeout, live: table, ct);
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine($"coordinator: sweep {sweepId} interrupted; `coordinator sweep resume {sweepId}` continues it.");
            throw;
        }
        SweepResults results = await SweepResults.LoadAsync(cli.Database, sweepId, ct);
        SweepResultsCommand.Print(settings, results, SweepBoard.Leaderboard(results, sweep.Spec.Metric.Name), $"{results.Name}: {results.Status} in {clock.Elapsed.TotalSeconds:F1} s");
        // The results format names the report (reports/ID/index.html): it is there once they are printed.
        await SweepReportCommand.WriteAfterRunAsync(cli, sweepId, table, ct);
        if (!ended)
        {
            Console.Error.WriteLine($"coordinator: error: sweep {sweepId} not finished after {timeout.TotalSeconds:F0} s (is a gpu-worker running? see `coordinator workers`).");
            return 1;
        }
        foreach (TrialResult failed in results.Trials.Where(t => t.Status == "failed").Take(5))
        {
            Console.Error.WriteLine($"coordinator: trial {failed.Id} failed: {failed.Failure}");
        }
        return results.Status == "failed" ? 1 : 0;
    }
}
