using System.Text.RegularExpressions;
using Cluster.Hosting;
using TorchSharp;

namespace Cluster.GpuWorker.Devices;

/// <summary>The device a worker computes on, chosen once at start and logged.</summary>
public sealed partial class TorchDevice
{
    private TorchDevice(string name, torch.Device device)
    {
        Name = name;
        Device = device;
    }

    /// <summary>"cpu" or "cuda:N", as given to libtorch.</summary>
    public string Name { get; }

    public torch.Device Device { get; }

    public bool IsCuda => Device.type == DeviceType.CUDA;

    public static TorchDevice Cpu { get; } = new("cpu", torch.CPU);

    /// <summary>Parses and checks `--device`; a device this build or machine cannot use is one clear error.</summary>
    public static TorchDevice Resolve(string requested)
    {
        string value = (requested ?? "").Trim().ToLowerInvariant();
        if (value == "cpu")
        {
            return Cpu;
        }
        Match m = CudaPattern().Match(value);
        if (!m.Success)
        {
            throw new ClusterConfigurationException($"--device '{requested}' is not one of: cpu, cuda, cuda:N.");
        }
        int index = m.Groups[1].Success ? int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) : 0;
        if (!torch.cuda.is_available())
        {
            throw new ClusterConfigurationException(
                $"--device {value}: no CUDA device is usable by this worker (it was built with the CPU libtorch, or no NVIDIA driver is present); "
                + "build the GPU image with -p:TorchBackend=cuda, or use --device cpu.");
        }
        int count = torch.cuda.device_count();
        if (index >= count)
        {
            throw new ClusterConfigurationException($"--device {value}: only {count} CUDA device(s) present (cuda:0 to cuda:{count - 1}).");
        }
        return new TorchDevice($"cuda:{index}", new torch.Device(DeviceType.CUDA, index));
    }

    public override string ToString() => Name;

    [GeneratedRegex(@"^cuda(?::(\d+))?$")]
    private static partial Regex CudaPattern();
}
