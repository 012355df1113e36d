using System.ComponentModel;
using System.Diagnostics;
using Cluster.Contracts.SelfTest;
using Cluster.GpuWorker.SelfTest;
using Cluster.Hosting;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Spectre.Console;
using ValidationResult = Spectre.Console.ValidationResult;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

public sealed class SelfTestSettings : GlobalSettings
{
    [CommandOption("--timeout <SECONDS>")]
    [Description("How long to wait for a worker to record the result.")]
    [DefaultValue(120)]
    public int TimeoutSeconds { get; init; }

    [CommandOption("--size <PIXELS>")]
    [Description("Input image size of the test convolution.")]
    [DefaultValue(32)]
    public int ImageSize { get; init; }

    [CommandOption("--layers <N>")]
    [Description("Number of convolution layers (more makes a longer job).")]
    [DefaultValue(4)]
    public int Layers { get; init; }

    public override ValidationResult Validate()
    {
        if (TimeoutSeconds is < 1 or > 86_400)
        {
            return ValidationResult.Error($"--timeout {TimeoutSeconds} must be within 1..86400 seconds.");
        }
        if (ImageSize is < 4 or > 1024)
        {
            return ValidationResult.Error($"--size {ImageSize} must be within 4..1024.");
        }
        if (Layers is < 1 or > 1_000_000)
        {
            return ValidationResult.Error($"--layers {Layers} must be within 1..1000000.");
        }
        return base.Validate();
    }
}

/// <summary>
/// `coordinator selftest`: sends a small TorchSharp job to the workers, waits until one records its result in
/// the database, and checks it against the same computation done here.
/// </summary>
public sealed class SelfTestCommand : AsyncCommand<SelfTestSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, SelfTestSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        await cli.RequireBrokerAsync(cancellationToken);
        await cli.RequireDatabaseAsync(cancellationToken);

        var job = new RunSelfTest { JobId = NewId.NextGuid(), ImageSize = settings.ImageSize, Layers = settings.Layers };
        var clock = Stopwatch.StartNew();
        using IHost host = cli.BuildHost(coordinatorService: false);
        await host.StartAsync(cancellationToken);
        try
        {
            ISendEndpoint queue = await host.Services.GetRequiredService<ISendEndpointProvider>().GetSendEndpoint(ClusterBus.GpuWorkQueue);
            await queue.Send(job, cancellationToken);
            Task<SelfTestOutcome> expected = Task.Run(() => SelfTestComputation.Run(job, TorchSharp.torch.CPU, cli.KernelVerifier(), cancellationToken), cancellationToken);

            SelfTestRunRecord? recorded = await WaitForResultAsync(cli, job.JobId, TimeSpan.FromSeconds(settings.TimeoutSeconds), cancellationToken);
            if (recorded is null)
            {
                Console.Error.WriteLine(
                    $"coordinator: error: no worker recorded self-test {job.JobId} within {settings.TimeoutSeconds} s "
                    + $"(is a gpu-worker running against {(cli.IsEmbedded ? "this process" : cli.Settings.RabbitMq.Describe())}? see `coordinator workers`).");
                return 1;
            }
            SelfTestOutcome local = await expected;
            double roundTrip = clock.Elapsed.TotalSeconds;
            bool matches = recorded.OutputShape == local.OutputShape
                && Math.Abs(recorded.Checksum - local.Checksum) <= 1e-4 * Math.Max(1.0, Math.Abs(local.Checksum));
            Report(settings, cli, recorded, local, matches, roundTrip);
            return matches ? 0 : 1;
        }
        finally
        {
            await host.StopAsync(CancellationToken.None);
        }
    }

    private static async Task<SelfTestRunRecord?> WaitForResultAsync(
        CliContext cli, Guid jobId, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var deadline = Stopwatch.StartNew();
        async Task<SelfTestRunRecord?> Poll()
        {
            while (deadline.Elapsed < timeout)
            {
                await using (ClusterDbContext db = cli.Database.CreateDbContext())
                {
                    SelfTestRunRecord? row = await db.SelfTestRuns.AsNoTracking().SingleOrDefaultAsync(r => r.JobId == jobId, cancellationToken);
                    if (row is not null)
                    {
                        return row;
                    }
                }
                await Task.Delay(TimeSpan.FromMilliseconds(200), cancellationToken);
            }
            return null;
        }
        if (cli.Options.Format == OutputFormat.Json || Console.IsErrorRedirected)
        {
            return await Poll();
        }
        return await AnsiConsole.Status().StartAsync($"Waiting for a worker to run self-test {jobId}...", _ => Poll());
    }

    private static void Report(SelfTestSettings settings, CliContext cli, SelfTestRunRecord recorded, SelfTestOutcome local, bool matches, double roundTrip)
    {
        CliOutput.Write(settings, new
        {
            jobId = recorded.JobId,
            mode = cli.Settings.Mode.ToString().ToLowerInvariant(),
            passed = matches,
            workerId = recorded.WorkerId,
            device = recorded.Device,
            torchVersion = recorded.TorchVersion,
            outputShape = recorded.OutputShape,
            checksum = recorded.Checksum,
            expectedChecksum = local.Checksum,
            workerMilliseconds = recorded.Milliseconds,
            roundTripSeconds = Math.Round(roundTrip, 3),
            recordedIn = cli.Database.Describe(),
            kernelCheck = recorded.KernelCheck,
        }, () =>
        {
            AnsiConsole.Write(CliOutput.KeyValueTable(matches ? "[green]self-test passed[/]" : "[red]self-test FAILED[/]",
            [
                ("job", recorded.JobId.ToString()),
                ("mode", cli.Settings.Mode.ToString().ToLowerInvariant()),
                ("worker", recorded.WorkerId),
                ("device", recorded.Device),
                ("libtorch", recorded.TorchVersion),
                ("output", recorded.OutputShape),
                ("checksum", $"{recorded.Checksum:R} (expected {local.Checksum:R})"),
                ("worker time", $"{recorded.Milliseconds:F0} ms"),
                ("round trip", $"{roundTrip:F2} s"),
                ("kernels", recorded.KernelCheck ?? "-"),
                ("recorded in", cli.Database.Describe()),
            ]));
        });
    }
}
