using System.ComponentModel;
using Microsoft.Extensions.Hosting;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

public sealed class DemoSettings : GlobalSettings
{
    [CommandOption("--timeout <SECONDS>")]
    [Description("Give up after this long (0: until done).")]
    [DefaultValue(0)]
    public int TimeoutSeconds { get; init; }

    public override ValidationResult Validate() =>
        Cluster ? ValidationResult.Error("demo runs embedded, in this process; for a cluster, `coordinator sweep submit examples/demo.yaml --cluster`.") : base.Validate();
}

/// <summary>
/// `coordinator demo`: the README's main job. An embedded sweep (in-memory bus, SQLite, ./.cluster) over the bundled
/// Fashion-MNIST sample with ImageNet's ResNet-18: feature-extractor heads, fine-tune-top and fine-tune-all at two
/// cutoffs and two learning rates; the feature sets the trials share are extracted once. Ends with the leaderboard and
/// the path of the sweep's HTML report.
/// A second run reuses the cached features and runs only the training.
/// </summary>
public sealed class DemoCommand : AsyncCommand<DemoSettings>
{
    /// <summary>Where the build puts the demo's spec (with its sample beside it): next to the program.</summary>
    public static string SpecPath => Path.Combine(AppContext.BaseDirectory, "demo", "demo.yaml");

    public override async Task<int> ExecuteAsync(CommandContext context, DemoSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings, embeddedOnly: true);
        if (settings.Format == OutputFormat.Table)
        {
            AnsiConsole.MarkupLine($"[grey]demo: {Markup.Escape(SpecPath)} on the bundled Fashion-MNIST sample, embedded (storage {Markup.Escape(cli.Settings.StorageRoot)})[/]");
        }
        PreparedSweep sweep = await SweepLauncher.PrepareAsync(cli, SpecPath, cancellationToken);
        await cli.RequireDatabaseAsync(cancellationToken);
        using IHost host = cli.BuildHost(coordinatorService: false);
        await host.StartAsync(cancellationToken);
        try
        {
            int code = await SweepRunCommand.RunAsync(cli, host, sweep, share: true, settings, TimeSpan.FromSeconds(settings.TimeoutSeconds), cancellationToken);
            if (settings.Format == OutputFormat.Table)
            {
                AnsiConsole.MarkupLine("[grey]next: open the report above in a browser; `coordinator sweep list`, `coordinator sweep results ID --format csv`; the spec above is a template for your own images.[/]");
            }
            return code;
        }
        finally
        {
            await host.StopAsync(CancellationToken.None);
        }
    }
}
