using System.Text.Json;
using System.Text.Json.Serialization;
using Spectre.Console;

namespace Cluster.Coordinator.Cli;

/// <summary>Results go to stdout, as a table for people or as JSON (`--format json`) for scripts.</summary>
public static class CliOutput
{
    private static readonly JsonSerializerOptions s_json = new(JsonSerializerDefaults.Web)
    {
        WriteIndented = true,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.CamelCase) },
    };

    public static void Write(GlobalSettings options, object json, Action renderTable)
    {
        if (options.Format == OutputFormat.Json)
        {
            Console.Out.WriteLine(JsonSerializer.Serialize(json, s_json));
        }
        else
        {
            renderTable();
        }
    }

    public static Table KeyValueTable(string title, IEnumerable<(string Key, string Value)> rows)
    {
        var table = new Table().Border(TableBorder.Rounded).Title(title).AddColumn("").AddColumn("");
        table.HideHeaders();
        foreach ((string key, string value) in rows)
        {
            table.AddRow(new Markup($"[grey]{Markup.Escape(key)}[/]"), new Text(value));
        }
        return table;
    }
}
