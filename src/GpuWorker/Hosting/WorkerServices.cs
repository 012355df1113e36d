using Cluster.GpuWorker.Devices;
using Cluster.GpuWorker.Extraction;
using Cluster.GpuWorker.Kernels;
using Cluster.Storage.Database;
using Cluster.Storage.Files;
using Cluster.Hosting;
using MassTransit;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Cluster.GpuWorker.Hosting;

public static class WorkerServices
{
    /// <summary>
    /// Everything a worker needs besides the bus: identity, device, job tracking and heartbeats. Used by the
    /// `gpu-worker` process and by the coordinator when it hosts a worker in-process (embedded mode).
    /// </summary>
    public static IServiceCollection AddGpuWorker(this IServiceCollection services, WorkerOptions options, TorchDevice device)
    {
        if (options.TorchThreads > 0)
        {
            TorchSharp.torch.set_num_threads(options.TorchThreads);
        }
        services.AddSingleton(sp => WorkerIdentity.Create(options.Id, device,
            directQueue: sp.GetRequiredService<ClusterRuntimeSettings>().Mode == RuntimeMode.Cluster));
        services.AddSingleton(new JobLanes(1));
        services.AddSingleton(device);
        services.AddSingleton(LaneLayout.For(device, options.ForwardLanes, options.TorchThreads));
        services.AddSingleton(sp => new ForwardLanes(sp.GetRequiredService<LaneLayout>()));
        services.AddSingleton(sp => new FileStore(sp.GetRequiredService<ClusterRuntimeSettings>().StorageRoot));
        services.AddSingleton(sp => new KernelVerifier(
            new KernelVerifierOptions { CacheDirectory = string.IsNullOrWhiteSpace(options.KernelCache) ? KernelVerifierOptions.DefaultCacheDirectory : options.KernelCache },
            sp.GetRequiredService<ILogger<KernelVerifier>>()));
        services.AddSingleton<ModelProvider>();
        services.AddSingleton<DatasetManifestCache>();
        services.AddSingleton<FeatureExtractor>();
        services.AddSingleton<FeatureShardRepair>();
        services.AddSingleton(sp => new ResidentFeatureSets(options.ResidentFeatureBytes(), sp.GetRequiredService<FeatureShardRepair>().LoadAsync));
        services.AddSingleton(Training.SegmentTimeLimit.FromSeconds(options.SegmentTimeLimitSeconds));
        services.AddSingleton<Training.SegmentTrainer>();
        services.AddSingleton<JobTracker>();
        services.AddSingleton(sp => new StorageWait(sp.GetRequiredService<FileStore>(), TimeSpan.FromSeconds(Math.Max(0.1, options.StorageRetrySeconds)),
            sp.GetRequiredService<JobTracker>(), sp.GetRequiredService<ILogger<StorageWait>>()));
        services.AddSingleton<WorkerJobRunner>();
        services.AddHostedService<KernelCanaryService>();
        services.AddHostedService(sp => new HeartbeatService(
            sp.GetRequiredService<IBus>(),
            sp.GetRequiredService<WorkerIdentity>(),
            sp.GetRequiredService<JobTracker>(),
            sp.GetRequiredService<LaneLayout>(),
            sp.GetRequiredService<KernelVerifier>(),
            TimeSpan.FromSeconds(options.HeartbeatSeconds),
            sp.GetRequiredService<ILogger<HeartbeatService>>(),
            sp.GetRequiredService<ResidentFeatureSets>()));
        return services;
    }
}
