using System.ComponentModel;
using System.Globalization;
using System.Text;
using Cluster.GpuWorker.Extraction;
using Cluster.Hosting;
using Cluster.Storage.Database;
using Cluster.Storage.Database.Entities;
using Cluster.Storage.Files;
using Cluster.Storage.Formats;
using Microsoft.EntityFrameworkCore;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Cluster.Coordinator.Cli.Commands;

/// <summary>`coordinator features list`: the feature sets in the cache.</summary>
public sealed class FeaturesListCommand : AsyncCommand<GlobalSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, GlobalSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        await cli.RequireDatabaseAsync(cancellationToken);
        List<FeatureSetRecord> sets;
        await using (ClusterDbContext db = cli.Database.CreateDbContext())
        {
            sets = await db.FeatureSets.AsNoTracking().OrderByDescending(s => s.CreatedAt).ToListAsync(cancellationToken);
        }
        var rows = sets.Select(s => new
        {
            key = s.Key,
            model = s.Model,
            layer = s.Layer,
            pooling = s.Pooling,
            dataset = s.DatasetId,
            status = s.Status.ToString().ToLowerInvariant(),
            shape = s.Shape,
            dtype = s.Dtype,
            images = s.ImageCount,
            extracted = s.ExtractedCount,
            shards = s.ShardCount,
            createdAt = s.CreatedAt,
        }).ToList();
        CliOutput.Write(settings, rows, () =>
        {
            if (rows.Count == 0)
            {
                AnsiConsole.MarkupLine("[yellow]No feature sets yet.[/] `coordinator extract --dataset DIR` makes one.");
                return;
            }
            var table = new Table().Border(TableBorder.Rounded).AddColumns("key", "status", "model", "layer", "pool", "shape", "dtype", "images", "shards", "created");
            foreach (var r in rows)
            {
                table.AddRow(r.key, r.status, r.model, r.layer, r.pooling, r.shape, r.dtype, $"{r.extracted}/{r.images}", r.shards.ToString(CultureInfo.InvariantCulture),
                    r.createdAt.ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture));
            }
            AnsiConsole.Write(table);
        });
        return 0;
    }
}

public sealed class FeaturesExportSettings : GlobalSettings
{
    [CommandArgument(0, "<KEY>")]
    [Description("A feature set key (`coordinator features list`).")]
    public string Key { get; init; } = "";

    [CommandOption("--npy <OUT>")]
    [Description("Write all features as one .npy file [n, ...] float32 (bf16 and fp16 sets are widened, exactly), in dataset row order.")]
    public string Npy { get; init; } = "";

    [CommandOption("--rows <OUT>")]
    [Description("Also write the dataset row id of each feature row as a .npy int64 vector.")]
    public string? Rows { get; init; }

    public override Spectre.Console.ValidationResult Validate() =>
        string.IsNullOrWhiteSpace(Npy) ? Spectre.Console.ValidationResult.Error("--npy OUT is required.") : base.Validate();
}

/// <summary>`coordinator features export KEY --npy OUT`: one .npy for tools that read numpy (scikit-learn, ML.NET).</summary>
public sealed class FeaturesExportCommand : AsyncCommand<FeaturesExportSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, FeaturesExportSettings settings, CancellationToken cancellationToken)
    {
        CliContext cli = CliContext.Create(settings);
        await cli.RequireDatabaseAsync(cancellationToken);
        FeatureSetRecord? set;
        List<FeatureShardRecord> shards;
        await using (ClusterDbContext db = cli.Database.CreateDbContext())
        {
            set = await db.FeatureSets.AsNoTracking().SingleOrDefaultAsync(s => s.Key == settings.Key, cancellationToken);
            if (set is null)
            {
                var keys = await db.FeatureSets.AsNoTracking().Select(s => s.Key).ToListAsync(cancellationToken);
                throw new ClusterConfigurationException(keys.Count == 0
                    ? $"no feature set '{settings.Key}': the cache is empty."
                    : new Cluster.GpuWorker.Models.UnknownNameException("feature set", settings.Key, "this cluster", keys).Message);
            }
            if (set.Status != FeatureSetStatus.Complete)
            {
                throw new ClusterConfigurationException($"feature set '{settings.Key}' is {set.Status.ToString().ToLowerInvariant()}, not complete: run its extract command again to finish it.");
            }
            shards = await db.FeatureShards.AsNoTracking().Where(s => s.FeatureSetKey == set.Key && s.Status == FeatureShardStatus.Complete)
                .OrderBy(s => s.Index).ToListAsync(cancellationToken);
        }
        var store = new FileStore(cli.Settings.StorageRoot);
        long[] rowShape = set.Shape.Split('x').Select(d => long.Parse(d, CultureInfo.InvariantCulture)).ToArray();
        long total = shards.Sum(s => (long)s.ImageCount);

        // Streams shard by shard: memory holds one shard, whatever the set's size.
        await using (FileStream features = File.Create(settings.Npy))
        await using (FileStream? rows = settings.Rows is null ? null : File.Create(settings.Rows))
        {
            WriteNpyHeader(features, "<f4", [total, .. rowShape]);
            if (rows is not null)
            {
                WriteNpyHeader(rows, "<i8", [total]);
            }
            foreach (FeatureShardRecord shard in shards)
            {
                await using Stream stream = store.OpenRead(shard.Path);
                using var reader = new SafetensorsReader(stream, shard.Path);
                features.Write(AsFloat32(reader, shard.Path));
                rows?.Write(reader.ReadTensorBytes("rows"));
            }
        }
        CliOutput.Write(settings, new { key = set.Key, npy = Path.GetFullPath(settings.Npy), rows = settings.Rows is null ? null : Path.GetFullPath(settings.Rows), shape = (long[])[total, .. rowShape] }, () =>
            Console.Out.WriteLine($"Wrote {settings.Npy}: float32 [{total}, {string.Join(", ", rowShape)}]{(settings.Rows is null ? "" : $"; row ids in {settings.Rows}")}"));
        return 0;
    }

    /// <summary>
    /// A shard's features as float32 bytes. bf16 and fp16 sets are widened rather than written with their own descr:
    /// numpy has no bfloat16 type (only the ml_dtypes package adds one), and one float32 .npy reads everywhere.
    /// </summary>
    private static byte[] AsFloat32(SafetensorsReader reader, string path)
    {
        SafetensorsTensorInfo info = reader.GetTensor("features");
        byte[] stored = reader.ReadTensorBytes("features");
        FeatureStorageDtype dtype = FeatureStorageDtype.FromSafetensors(info.Dtype, path);
        if (dtype == FeatureStorageDtype.Fp32)
        {
            return stored;
        }
        var widened = new float[info.ElementCount];
        dtype.Decode(stored, widened);
        return System.Runtime.InteropServices.MemoryMarshal.AsBytes(widened.AsSpan()).ToArray();
    }

    /// <summary>The .npy v1.0 header: magic, version, little-endian length, a Python dict literal padded to 64 bytes.</summary>
    private static void WriteNpyHeader(Stream stream, string descr, long[] shape)
    {
        string dims = shape.Length == 1 ? $"{shape[0]}," : string.Join(", ", shape);
        string dict = $"{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}";
        int unpadded = 10 + dict.Length + 1;
        string header = dict + new string(' ', (64 - unpadded % 64) % 64) + "\n";
        stream.Write([0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 1, 0]);
        stream.Write(BitConverter.GetBytes((ushort)header.Length));
        stream.Write(Encoding.ASCII.GetBytes(header));
    }
}
