using System.ComponentModel;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli;

public enum OutputFormat
{
    Table,
    Json,

    /// <summary>Only where a command prints rows a spreadsheet takes (`sweep results`).</summary>
    Csv,
}

/// <summary>Options every command takes.</summary>
public class GlobalSettings : CommandSettings
{
    [CommandOption("--embedded")]
    [Description("Run in this process: in-memory bus, SQLite, a local storage folder (the default when no broker is configured).")]
    public bool Embedded { get; init; }

    [CommandOption("--cluster")]
    [Description("Use RabbitMQ, PostgreSQL and the shared volume from the configuration.")]
    public bool Cluster { get; init; }

    [CommandOption("--format <FORMAT>")]
    [Description("Output: table (default) or json (csv where a command says so).")]
    [DefaultValue(OutputFormat.Table)]
    public OutputFormat Format { get; init; }

    [CommandOption("-v|--verbose")]
    [Description("Show debug logs and stack traces.")]
    public bool Verbose { get; init; }

    [CommandOption("--storage <DIR>")]
    [Description("Storage root (Cluster:StorageRoot); embedded default: ./.cluster")]
    public string? Storage { get; init; }

    [CommandOption("--set <KEY=VALUE>")]
    [Description("Override any setting, e.g. --set RabbitMq:Host=10.0.0.5 (repeatable).")]
    public string[] Set { get; init; } = [];

    /// <summary>Whether the command can print `--format csv`.</summary>
    protected virtual bool PrintsCsv => false;

    public override ValidationResult Validate()
    {
        if (Format == OutputFormat.Csv && !PrintsCsv)
        {
            return ValidationResult.Error("--format csv is for `sweep results` only; use table or json.");
        }
        if (Embedded && Cluster)
        {
            return ValidationResult.Error("--embedded and --cluster exclude each other; give one.");
        }
        foreach (string s in Set)
        {
            int eq = s.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0)
            {
                return ValidationResult.Error($"--set '{s}' is not KEY=VALUE (e.g. --set RabbitMq:Port=5673).");
            }
        }
        return ValidationResult.Success();
    }
}
