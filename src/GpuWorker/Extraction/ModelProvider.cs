using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Models;
using Cluster.GpuWorker.Weights;
using Cluster.Storage.Files;
using Microsoft.Extensions.Logging;
using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Extraction;

/// <summary>What identifies a ready-to-run model on a worker.</summary>
/// <param name="WeightsPath">A weights file relative to the storage root, or null for built-in or seeded random weights.</param>
/// <param name="WeightsHash">"sha256:…", "builtin:NAME" or "random:SEED".</param>
public sealed record ModelRequest(string Model, string? WeightsPath, string WeightsHash, string Precision);

/// <summary>
/// Builds a backbone with its weights, in eval mode on the worker's device, and keeps the last one: a worker
/// runs one job at a time and consecutive shards of a feature set use the same model.
/// </summary>
public sealed class ModelProvider(FileStore store, TorchDevice device, ILogger<ModelProvider> logger) : IDisposable
{
    private readonly object _gate = new();
    private ModelRequest? _cachedRequest;
    private Backbone? _cached;

    public Backbone Get(ModelRequest request)
    {
        lock (_gate)
        {
            if (_cached is not null && request == _cachedRequest)
            {
                return _cached;
            }
            _cached?.Dispose();
            _cached = null;
            _cached = Build(request);
            _cachedRequest = request;
            return _cached;
        }
    }

    public static ScalarType ComputeType(string precision) => precision switch
    {
        "fp32" => ScalarType.Float32,
        "bf16" => ScalarType.BFloat16,
        _ => throw new ArgumentException($"precision '{precision}' is not one of: fp32, bf16", nameof(precision)),
    };

    private Backbone Build(ModelRequest request)
    {
        ArchitectureInfo info = ModelCatalog.Find(request.Model);
        Backbone model;
        if (request.WeightsHash.StartsWith("random:", StringComparison.Ordinal))
        {
            // Seeded, so every worker builds the same "random" weights and shards of one set agree.
            torch.random.manual_seed(long.Parse(request.WeightsHash["random:".Length..], System.Globalization.CultureInfo.InvariantCulture));
            model = info.Build();
        }
        else
        {
            model = info.Build();
            if (request.WeightsPath is not null)
            {
                using StateDict weights = StateDictFile.Load(store.Resolve(request.WeightsPath));
                WeightsLoadReport report = WeightsLoader.Apply(model, weights, strict: true);
                logger.LogInformation("Loaded {Count} tensors into {Model} from {Weights}", report.Loaded, request.Model, request.WeightsPath);
            }
        }
        model.eval();
        model.to(device.Device);
        if (request.Precision == "bf16")
        {
            model.to(ScalarType.BFloat16);
            ToChannelsLast(model);
        }
        logger.LogInformation("Model {Model} ({Weights}) ready on {Device} in {Precision}", request.Model, request.WeightsHash, device.Name, request.Precision);
        return model;
    }

    /// <summary>
    /// Gives every 4-D weight channels-last strides (NHWC in memory, NCHW in shape). TorchSharp has no
    /// memory_format API; with both weights and inputs in this layout oneDNN takes its NHWC path, which on
    /// CPUs with AMX/AVX-512 doubles the bf16 convolution rate (ENVIRONMENT.md).
    /// </summary>
    public static void ToChannelsLast(nn.Module model)
    {
        using var noGrad = no_grad();
        foreach (var (_, parameter) in model.named_parameters())
        {
            if (parameter.dim() == 4)
            {
                using Tensor nhwc = parameter.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2);
                parameter.set_(nhwc);
            }
        }
    }

    /// <summary>The same channels-last layout for an input batch.</summary>
    public static Tensor ChannelsLast(Tensor batch) => batch.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2);

    public void Dispose()
    {
        lock (_gate)
        {
            _cached?.Dispose();
            _cached = null;
        }
    }
}
