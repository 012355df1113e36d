using System.Security.Cryptography;
using Cluster.Coordinator.Specs;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Weights;
using Cluster.Storage.Files;

namespace Cluster.Coordinator.Planning;

/// <summary>
/// A user's weights file on its way to the workers: checked once on the coordinator (it must load strictly into the
/// architecture, so a checkpoint of another network fails before any work is sent, with the diff), then copied onto the
/// shared storage under its hash so that every worker reads the same bytes. `extract --weights` and a sweep spec's
/// `weights:` both go through here.
/// </summary>
public static class WeightsStaging
{
    /// <summary>
    /// The file's sha256 (lowercase hex) once it loads strictly into <paramref name="architecture"/>; otherwise
    /// <see cref="WeightsCheckException"/> with what is wrong, on one line. <paramref name="model"/>, when given, is an
    /// already built instance to load into (it saves building another).
    /// </summary>
    public static async Task<string> CheckAsync(string path, ArchitectureInfo architecture, Backbone? model, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(architecture);
        if (!File.Exists(path))
        {
            throw new WeightsCheckException("does not exist");
        }
        try
        {
            using StateDict weights = StateDictFile.Load(path);
            if (model is null)
            {
                using Backbone built = architecture.Build();
                WeightsLoader.Apply(built, weights, strict: true);
            }
            else
            {
                WeightsLoader.Apply(model, weights, strict: true);
            }
        }
        catch (Exception e) when (e is WeightsFileException or WeightsMismatchException)
        {
            throw new WeightsCheckException($"does not fit {architecture.Name}: {e.Message.ReplaceLineEndings(" ")}", e);
        }
        await using FileStream file = File.OpenRead(path);
        return Convert.ToHexStringLower(await SHA256.HashDataAsync(file, ct));
    }

    /// <summary>
    /// Copies a checked file to `weights/&lt;first 16 hex of its sha256&gt;/&lt;file name&gt;` on the storage unless it
    /// is already there; returns that storage-relative path (what a request's weights path names).
    /// </summary>
    public static async Task<string> StageAsync(FileStore store, string path, string sha256, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(store);
        string staged = $"weights/{sha256[..16]}/{Path.GetFileName(path)}";
        if (!store.Exists(staged))
        {
            await using FileStream source = File.OpenRead(path);
            await store.WriteAsync(staged, (target, c) => source.CopyToAsync(target, c), ct);
        }
        return staged;
    }

    /// <summary>
    /// A spec's weights file checked against the trial's model, as <see cref="CheckAsync"/> does; a problem is a
    /// <see cref="SpecException"/> naming the spec's line. Returns its sha256, or null when the trial names builtin or
    /// random weights.
    /// </summary>
    public static async Task<string?> CheckSpecFileAsync(SweepSpec spec, TrialChoice choice, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(spec);
        ArgumentNullException.ThrowIfNull(choice);
        if (choice.Weights.Kind != SpecWeightsKind.File)
        {
            return null;
        }
        try
        {
            return await CheckAsync(choice.Weights.FullPath!, ModelCatalog.Find(choice.Model), model: null, ct);
        }
        catch (WeightsCheckException e)
        {
            throw new SpecException($"{spec.Source} line {spec.Weights.Line}: weights '{choice.Weights.Text}' {e.Message}", e);
        }
    }

    /// <summary>The identity of builtin or random weights as keys carry it; null for a file (its hash names it).</summary>
    public static string? UnstagedHash(TrialChoice choice)
    {
        ArgumentNullException.ThrowIfNull(choice);
        return choice.Weights.Kind switch
        {
            SpecWeightsKind.Builtin => $"builtin:{choice.Model}",
            SpecWeightsKind.Random => $"random:{choice.Seed}",
            _ => null,
        };
    }

    /// <summary>The hash a request carries for a staged file (feature-set and trial keys include it).</summary>
    public static string HashName(string sha256) => $"sha256:{sha256}";
}

/// <summary>A weights file that cannot be used; the message says why, for the caller to prefix with where it was named.</summary>
public sealed class WeightsCheckException : Exception
{
    public WeightsCheckException(string problem, Exception? inner = null) : base(problem, inner) { }
}
