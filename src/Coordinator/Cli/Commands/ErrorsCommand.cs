using System.ComponentModel;
using Cluster.Coordinator.Orchestration;
using Cluster.Hosting;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

public sealed class ErrorsSettings : GlobalSettings
{
    [CommandOption("--requeue")]
    [Description("Send the extraction shards and self-tests listed back to the workers (segments stay: their trials were failed).")]
    public bool Requeue { get; init; }

    [CommandOption("--limit <N>")]
    [Description("List at most this many jobs, oldest first.")]
    [DefaultValue(1000)]
    public int Limit { get; init; }

    public override ValidationResult Validate() =>
        Limit is < 1 or > 100_000 ? ValidationResult.Error($"--limit must be between 1 and 100000 (got {Limit}).") : base.Validate();
}

/// <summary>
/// `coordinator errors`: what is in the error queue, the jobs no worker could finish (each already failed its trial or
/// shard, via the coordinator service), and why; `--requeue` gives the ones worth another try back to the workers.
/// </summary>
public sealed class ErrorsCommand : AsyncCommand<ErrorsSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, ErrorsSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        if (cli.IsEmbedded)
        {
            throw new ClusterConfigurationException(
                "coordinator errors reads the cluster's error queue (--cluster); embedded, a job that keeps failing fails its trial or shard at once and nothing waits in a queue (see `sweep status`).");
        }
        await cli.RequireBrokerAsync(cancellationToken);
        await using ErrorQueue queue = await ErrorQueue.OpenAsync(cli.Settings.RabbitMq, cancellationToken);
        IReadOnlyList<DeadJob> jobs = await queue.TakeAsync(settings.Limit, cancellationToken);
        var requeued = new HashSet<DeadJob>(ReferenceEqualityComparer.Instance);
        if (settings.Requeue)
        {
            foreach (DeadJob job in jobs.Where(j => j.Requeueable))
            {
                await queue.RequeueAsync(job, cancellationToken);
                requeued.Add(job);
            }
        }
        var rows = jobs.Select(j => new
        {
            kind = j.Kind,
            job = j.Job,
            sweep = j.SweepId,
            trial = j.TrialId,
            featureSet = j.FeatureSetKey,
            reason = j.Reason,
            failedAt = j.FailedAt,
            requeued = requeued.Contains(j),
            messageType = j.MessageType,
        }).ToList();
        CliOutput.Write(settings, rows, () =>
        {
            if (rows.Count == 0)
            {
                AnsiConsole.MarkupLine("[green]The error queue is empty.[/]");
                return;
            }
            var table = new Table().Border(TableBorder.Rounded).AddColumns("kind", "job", "failed at", "reason", "requeued");
            foreach (var r in rows)
            {
                table.AddRow(
                    new Text(r.kind), new Text(r.job), new Text(r.failedAt?.ToString("u", System.Globalization.CultureInfo.InvariantCulture) ?? "-"),
                    new Text(r.reason), new Markup(r.requeued ? "[green]yes[/]" : "-"));
            }
            AnsiConsole.Write(table);
        });
        if (settings.Requeue)
        {
            foreach (DeadJob kept in jobs.Where(j => !j.Requeueable))
            {
                // stderr: the JSON on stdout stays parseable.
                Console.Error.WriteLine(kept.Kind == DeadJob.Kinds.Segment
                    ? $"not requeued: {kept.Job} of sweep {kept.SweepId}: its trial was failed with this reason and the sweep went on without it; a new sweep retries it."
                    : $"not requeued: {kept.Job}: not a job this version knows ({kept.MessageType}).");
            }
        }
        return 0;
    }
}
