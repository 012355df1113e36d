using System.ComponentModel;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Cluster.Hosting;
using Cluster.Contracts;
using Cluster.Contracts.Training;
using Cluster.Coordinator.Orchestration;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

public class SweepIdSettings : GlobalSettings
{
    [CommandArgument(0, "<ID>")]
    [Description("The sweep's id, or the start of it that tables show (its first 8 characters).")]
    public string Id { get; init; } = "";
}

public sealed class SweepSubmitSettings : SweepSpecSettings;

public sealed class SweepResultsSettings : SweepIdSettings
{
    [CommandOption("--top <N>")]
    [Description("Only the best N trials (0: all).")]
    [DefaultValue(0)]
    public int Top { get; init; }

    protected override bool PrintsCsv => true;
}

public sealed class SweepWatchSettings : SweepIdSettings
{
    [CommandOption("--timeout <SECONDS>")]
    [Description("Stop watching after this long (0: until the sweep ends).")]
    [DefaultValue(0)]
    public int TimeoutSeconds { get; init; }
}

/// <summary>Finding a sweep by the id or its prefix a user copied from a table.</summary>
internal static class SweepIds
{
    public static async Task<Guid> ResolveAsync(CliContext cli, string text, CancellationToken ct)
    {
        await cli.RequireDatabaseAsync(ct);
        if (Guid.TryParse(text, out Guid id))
        {
            return id;
        }
        string prefix = text.Trim().ToLowerInvariant();
        if (prefix.Length < 4)
        {
            throw new ClusterConfigurationException($"sweep id '{text}' is too short: give at least its first 4 characters (see `coordinator sweep list`).");
        }
        await using ClusterDbContext db = cli.Database.CreateDbContext();
        List<Guid> ids = await db.Sweeps.AsNoTracking().Select(s => s.Id).ToListAsync(ct);
        Guid[] matches = [.. ids.Where(i => i.ToString().StartsWith(prefix, StringComparison.Ordinal))];
        return matches.Length switch
        {
            1 => matches[0],
            0 => throw new ClusterConfigurationException($"no sweep has id '{text}' (see `coordinator sweep list`)."),
            _ => throw new ClusterConfigurationException($"sweep id '{text}' matches {matches.Length} sweeps; give more of it."),
        };
    }

    public static async Task<SweepBoardState> LoadAsync(CliContext cli, string text, CancellationToken ct)
    {
        Guid id = await ResolveAsync(cli, text, ct);
        return await SweepBoard.LoadAsync(cli.Database, id, ct) ?? throw new ClusterConfigurationException($"no sweep has id '{text}' (see `coordinator sweep list`).");
    }

    /// <summary>
    /// Sends a command to the coordinator service (embedded: the one this process hosts, which shares the database) and
    /// waits until the database shows it applied (<paramref name="applied"/>), so the command's effect is there when it returns.
    /// </summary>
    public static async Task SendAsync<T>(CliContext cli, T message, Func<SweepBoardState, bool> applied, Guid sweepId, CancellationToken ct) where T : class
    {
        await cli.RequireBrokerAsync(ct);
        using IHost host = cli.BuildHost(coordinatorService: false);
        await host.StartAsync(ct);
        try
        {
            ISendEndpoint coordinator = await host.Services.GetRequiredService<ISendEndpointProvider>().GetSendEndpoint(new Uri($"queue:{QueueNames.Coordinator}"));
            await coordinator.Send(message, ct);
            DateTime deadline = DateTime.UtcNow.AddSeconds(60);
            while (!(await SweepBoard.LoadAsync(cli.Database, sweepId, ct) is SweepBoardState state && applied(state)))
            {
                if (DateTime.UtcNow > deadline)
                {
                    throw new ClusterConfigurationException($"the coordinator service did not apply {typeof(T).Name} to sweep {sweepId} within 60 s: is `coordinator serve` running?");
                }
                await Task.Delay(200, ct);
            }
        }
        finally
        {
            await host.StopAsync(CancellationToken.None);
        }
    }
}

/// <summary>`sweep submit SPEC`: checks, makes sure of the feature sets, submits to the cluster's coordinator service and prints the id.</summary>
public sealed class SweepSubmitCommand : AsyncCommand<SweepSubmitSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, SweepSubmitSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        if (cli.IsEmbedded)
        {
            throw new ClusterConfigurationException("sweep submit hands a sweep to a running cluster (--cluster); embedded, use `coordinator sweep run SPEC`.");
        }
        PreparedSweep sweep = await SweepLauncher.PrepareAsync(cli, settings.Spec, cancellationToken);
        await cli.RequireBrokerAsync(cancellationToken);
        await cli.RequireDatabaseAsync(cancellationToken);
        using IHost host = cli.BuildHost(coordinatorService: false);
        await host.StartAsync(cancellationToken);
        try
        {
            Guid id = await SweepLauncher.SubmitAsync(host, cli, sweep, !settings.NoShare, cancellationToken);
            CliOutput.Write(settings, new { sweep = id, trials = sweep.Layout.Trials.Count }, () => Console.Out.WriteLine(id));
            return 0;
        }
        finally
        {
            await host.StopAsync(CancellationToken.None);
        }
    }
}

/// <summary>`sweep list`: every sweep, newest first, with its state and best trial.</summary>
public sealed class SweepListCommand : AsyncCommand<GlobalSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, GlobalSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        await cli.RequireDatabaseAsync(cancellationToken);
        await using ClusterDbContext db = cli.Database.CreateDbContext();
        List<SweepRecord> sweeps = await db.Sweeps.AsNoTracking().OrderByDescending(s => s.CreatedAt).ToListAsync(cancellationToken);
        var counts = (await db.Trials.AsNoTracking().GroupBy(t => new { t.SweepId, t.Status }).Select(g => new { g.Key.SweepId, g.Key.Status, Count = g.Count(), Best = g.Max(t => t.BestMetric) })
            .ToListAsync(cancellationToken)).ToLookup(r => r.SweepId);
        var rows = sweeps.Select(s => new
        {
            id = s.Id,
            name = s.Name,
            status = SweepBoard.Name(s.Status),
            trials = counts[s.Id].Sum(r => r.Count),
            ended = counts[s.Id].Where(r => r.Status is TrialStatus.Completed or TrialStatus.Stopped or TrialStatus.Failed).Sum(r => r.Count),
            failed = counts[s.Id].Where(r => r.Status == TrialStatus.Failed).Sum(r => r.Count),
            best_val_accuracy = counts[s.Id].Max(r => r.Best),
            created_at = s.CreatedAt,
            seconds = ((s.CompletedAt ?? DateTime.UtcNow) - (s.StartedAt ?? s.CreatedAt)).TotalSeconds,
            stop_reason = s.StopReason,
        }).ToList();
        CliOutput.Write(settings, rows, () =>
        {
            var table = new Table().Border(TableBorder.Rounded).AddColumns("id", "name", "status", "trials", "failed", "best val acc", "created", "seconds");
            foreach (var r in rows)
            {
                table.AddRow(r.id.ToString()[..8], Markup.Escape(r.name), r.status + (r.stop_reason is null ? "" : $" ({Markup.Escape(r.stop_reason)})"),
                    $"{r.ended}/{r.trials}", r.failed.ToString(CultureInfo.InvariantCulture), SweepBoard.Percent(r.best_val_accuracy),
                    r.created_at.ToString("u", CultureInfo.InvariantCulture), r.seconds.ToString("F0", CultureInfo.InvariantCulture));
            }
            AnsiConsole.Write(table);
        });
        return 0;
    }
}

/// <summary>`sweep status ID`: the sweep's state and a table of its trials, once.</summary>
public sealed class SweepStatusCommand : AsyncCommand<SweepIdSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, SweepIdSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        SweepBoardState state = await SweepIds.LoadAsync(cli, settings.Id, cancellationToken);
        SweepRecord s = state.Sweep;
        var byStatus = state.Trials.GroupBy(t => SweepBoard.Name(t.Status)).ToDictionary(g => g.Key, g => g.Count());
        CliOutput.Write(settings, new
        {
            sweep = s.Id,
            name = s.Name,
            status = SweepBoard.Name(s.Status),
            stop_reason = s.StopReason,
            search = s.Search is null ? (JsonElement?)null : JsonDocument.Parse(s.Search).RootElement,
            trials = byStatus,
            running = state.Trials.Where(t => t.Status == TrialStatus.Running).Select(t => new { trial = t.Number, epoch = t.Epoch, target_epochs = t.TargetEpochs, worker = t.WorkerId, in_flight = t.DispatchedSegment }),
            failed = state.Trials.Where(t => t.Status == TrialStatus.Failed).Select(t => new { trial = t.Number, reason = t.FailureReason, attempts = t.Attempts }),
            extracting = state.Extractions.Select(e => new { key = e.Key, layer = e.Layer, images_done = e.ImagesDone, images = e.Images }),
        }, () =>
        {
            AnsiConsole.Write(SweepBoard.Render(state, ((s.CompletedAt ?? DateTime.UtcNow) - (s.StartedAt ?? s.CreatedAt))));
            AnsiConsole.MarkupLine(Markup.Escape($"trials: {string.Join(", ", byStatus.Select(kv => $"{kv.Value} {kv.Key}"))}" + (s.StopReason is null ? "" : $"; stopped: {s.StopReason}")));
            foreach (TrialRecord t in state.Trials.Where(t => t.Status == TrialStatus.Failed))
            {
                AnsiConsole.MarkupLine($"[red]trial {t.Number} failed[/]: {Markup.Escape(t.FailureReason ?? "")}");
            }
        });
        return 0;
    }
}

/// <summary>`sweep watch ID`: the live table until the sweep ends.</summary>
public sealed class SweepWatchCommand : AsyncCommand<SweepWatchSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, SweepWatchSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        Guid id = await SweepIds.ResolveAsync(cli, settings.Id, cancellationToken);
        bool ended = await SweepBoard.FollowAsync(cli.Database, id, TimeSpan.FromSeconds(settings.TimeoutSeconds), live: true, cancellationToken);
        SweepBoardState state = (await SweepBoard.LoadAsync(cli.Database, id, cancellationToken))!;
        if (Console.IsOutputRedirected || settings.Format == OutputFormat.Json)
        {
            CliOutput.Write(settings, new { sweep = id, status = SweepBoard.Name(state.Sweep.Status), ended }, () => AnsiConsole.Write(SweepBoard.Render(state, TimeSpan.Zero)));
        }
        return ended ? 0 : 1;
    }
}

/// <summary>`sweep results ID [--top N]`: the leaderboard, as a table, DESIGN.md's JSON results format, or CSV.</summary>
public sealed class SweepResultsCommand : AsyncCommand<SweepResultsSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, SweepResultsSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        SweepBoardState state = await SweepIds.LoadAsync(cli, settings.Id, cancellationToken);
        SweepResults results = await SweepResults.LoadAsync(cli.Database, state.Sweep.Id, cancellationToken);
        string metric = state.Sweep.Search is string search ? JsonSerializer.Deserialize<SweepSearch>(search, new JsonSerializerOptions(JsonSerializerDefaults.Web))!.Metric : "val_accuracy";
        IReadOnlyList<TrialResult> ranked = SweepBoard.Leaderboard(results, metric);
        if (settings.Top > 0)
        {
            ranked = [.. ranked.Take(settings.Top)];
        }
        Print(settings, results, ranked, $"{results.Name}: {results.Status}");
        return 0;
    }

    /// <summary>The leaderboard in the format asked for; JSON keeps DESIGN.md's results format with the trials ranked.</summary>
    public static void Print(GlobalSettings settings, SweepResults results, IReadOnlyList<TrialResult> ranked, string title)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(results);
        switch (settings.Format)
        {
            case OutputFormat.Json:
                Console.Out.WriteLine(JsonSerializer.Serialize(results with { Trials = ranked }, SweepResults.Json));
                break;
            case OutputFormat.Csv:
                Console.Out.Write(Csv(ranked));
                break;
            default:
                AnsiConsole.Write(SweepBoard.LeaderboardTable(results, ranked, title));
                if (ranked.FirstOrDefault(t => t.Checkpoint is not null) is TrialResult best)
                {
                    AnsiConsole.MarkupLine($"[grey]best checkpoint:[/] {Markup.Escape(best.Checkpoint!)}");
                }
                break;
        }
    }

    /// <summary>One row a trial: rank, id, status, each hyperparameter, then the results (RFC 4180 quoting).</summary>
    public static string Csv(IReadOnlyList<TrialResult> ranked)
    {
        ArgumentNullException.ThrowIfNull(ranked);
        CultureInfo c = CultureInfo.InvariantCulture;
        string[] fields = [.. ranked.SelectMany(t => t.Params.Select(kv => kv.Key)).Distinct()];
        static string Quote(string s) => s.IndexOfAny([',', '"', '\n', '\r']) >= 0 ? $"\"{s.Replace("\"", "\"\"", StringComparison.Ordinal)}\"" : s;
        var csv = new StringBuilder();
        csv.AppendLine(string.Join(',', new[] { "rank", "id", "status" }.Concat(fields).Concat(["epochs", "val_accuracy", "val_loss", "test_accuracy", "seconds", "checkpoint", "failure"])));
        int rank = 0;
        foreach (TrialResult t in ranked)
        {
            rank++;
            IEnumerable<string> values = fields.Select(f => t.Params.TryGetPropertyValue(f, out var v) && v is not null ? v.ToString() : "");
            csv.AppendLine(string.Join(',', new[] { rank.ToString(c), t.Id, t.Status }.Concat(values).Concat([
                t.Epochs.ToString(c), t.ValAccuracy?.ToString("R", c) ?? "", t.ValLoss?.ToString("R", c) ?? "", t.TestAccuracy?.ToString("R", c) ?? "",
                t.Seconds.ToString("R", c), t.Checkpoint ?? "", t.Failure ?? "",
            ]).Select(Quote)));
        }
        return csv.ToString();
    }
}

/// <summary>`sweep cancel ID`: the service stops dispatching; segments in flight finish at their checkpoint. `sweep resume ID` continues.</summary>
public sealed class SweepCancelCommand : AsyncCommand<SweepIdSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, SweepIdSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        SweepBoardState state = await SweepIds.LoadAsync(cli, settings.Id, cancellationToken);
        if (state.Sweep.Status != SweepStatus.Running)
        {
            throw new ClusterConfigurationException($"sweep {state.Sweep.Id} is {SweepBoard.Name(state.Sweep.Status)}: only a running sweep can be cancelled.");
        }
        await SweepIds.SendAsync(cli, new CancelSweep { SweepId = state.Sweep.Id }, s => s.Sweep.Status != SweepStatus.Running, state.Sweep.Id, cancellationToken);
        CliOutput.Write(settings, new { sweep = state.Sweep.Id, cancel = "sent" },
            () => Console.Out.WriteLine($"cancel of sweep {state.Sweep.Id} sent: nothing more is dispatched; `coordinator sweep resume {state.Sweep.Id.ToString()[..8]}` continues it."));
        return 0;
    }
}

/// <summary>
/// `sweep resume ID`: continues a cancelled or interrupted sweep, each trial from its last checkpoint. In the cluster the
/// service does the work; embedded, this process does it, so it follows the sweep to its end as `sweep run` does.
/// </summary>
public sealed class SweepResumeCommand : AsyncCommand<SweepWatchSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, SweepWatchSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        SweepBoardState state = await SweepIds.LoadAsync(cli, settings.Id, cancellationToken);
        Guid id = state.Sweep.Id;
        if (state.Sweep.Status is not (SweepStatus.Running or SweepStatus.Cancelled))
        {
            throw new ClusterConfigurationException($"sweep {id} is {SweepBoard.Name(state.Sweep.Status)}: only a cancelled or interrupted sweep can be resumed.");
        }
        if (!cli.IsEmbedded)
        {
            await SweepIds.SendAsync(cli, new ResumeSweep { SweepId = id }, s => s.Sweep.Status != SweepStatus.Cancelled, id, cancellationToken);
            CliOutput.Write(settings, new { sweep = id, resume = "sent" }, () => Console.Out.WriteLine($"resume of sweep {id} sent; `coordinator sweep watch {id.ToString()[..8]}` follows it."));
            return 0;
        }
        using IHost host = cli.BuildHost(coordinatorService: false);
        await host.StartAsync(cancellationToken);
        try
        {
            // This process is the whole cluster: whatever the last one had in flight died with its in-memory queue.
            ISendEndpoint coordinator = await host.Services.GetRequiredService<ISendEndpointProvider>().GetSendEndpoint(new Uri($"queue:{QueueNames.Coordinator}"));
            await coordinator.Send(new ResumeSweep { SweepId = id, InFlightLost = true }, cancellationToken);
            bool ended = await SweepBoard.FollowAsync(cli.Database, id, TimeSpan.FromSeconds(settings.TimeoutSeconds), live: settings.Format == OutputFormat.Table, cancellationToken);
            SweepResults results = await SweepResults.LoadAsync(cli.Database, id, cancellationToken);
            string metric = state.Sweep.Search is string search ? JsonSerializer.Deserialize<SweepSearch>(search, new JsonSerializerOptions(JsonSerializerDefaults.Web))!.Metric : "val_accuracy";
            SweepResultsCommand.Print(settings, results, SweepBoard.Leaderboard(results, metric), $"{results.Name}: {results.Status}");
            await SweepReportCommand.WriteAfterRunAsync(cli, id, settings.Format == OutputFormat.Table, cancellationToken);
            return ended && results.Status != "failed" ? 0 : 1;
        }
        finally
        {
            await host.StopAsync(CancellationToken.None);
        }
    }
}
