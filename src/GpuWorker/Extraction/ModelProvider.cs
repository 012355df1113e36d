using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Kernels;
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
/// Builds a backbone with its weights, in eval mode on the worker's device, its convolutions checked for the plan,
/// and keeps the last one: a worker runs one job at a time and consecutive shards of a feature set use the same model
/// (a later shard's plan only adds the batch sizes not yet checked).
/// </summary>
public sealed class ModelProvider(FileStore store, TorchDevice device, KernelVerifier verifier, ILogger<ModelProvider> logger) : IDisposable
{
    private readonly object _gate = new();
    private ModelRequest? _cachedRequest;
    private InferenceModel? _cached;

    public InferenceModel Get(ModelRequest request, KernelPlan plan)
    {
        lock (_gate)
        {
            if (_cached is not null && request == _cachedRequest)
            {
                _cached.EnsureVerified(plan);
                return _cached;
            }
            _cached?.Dispose();
            _cached = null;
            _cached = Build(request, plan);
            _cachedRequest = request;
            return _cached;
        }
    }

    private InferenceModel Build(ModelRequest request, KernelPlan plan)
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
        InferenceModel prepared = InferenceModel.Prepare(model, request.Precision, device.Device, verifier, plan);
        int rerouted = prepared.Routes.Count(r => r.Value != ConvolutionPath.Native);
        logger.LogInformation("Model {Model} ({Weights}) ready on {Device} in {Precision}{Folded}; {Configs} convolution configurations checked, {Rerouted} rerouted",
            request.Model, request.WeightsHash, device.Name, request.Precision, prepared.Folded is null ? "" : ", batch norms folded",
            prepared.Routes.Count, rerouted);
        return prepared;
    }

    public void Dispose()
    {
        lock (_gate)
        {
            _cached?.Dispose();
            _cached = null;
        }
    }
}
