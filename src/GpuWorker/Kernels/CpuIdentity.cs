using System.Globalization;
using System.Security.Cryptography;
using System.Text;

namespace Cluster.GpuWorker.Kernels;

/// <summary>
/// What a kernel verdict depends on besides the configuration: the processor (vendor, family, model, stepping,
/// microcode, feature flags), the cache sizes it reports (oneDNN blocks its work by them, and a hypervisor may report
/// odd ones: the Zen 5 machines report a 508 MiB L3) and the oneDNN/MKL settings of the environment. Two machines with
/// the same fingerprint run the same kernels the same way.
/// </summary>
public sealed record CpuIdentity(string Description, string Fingerprint)
{
    private static readonly Lazy<CpuIdentity> s_current = new(Read);

    public static CpuIdentity Current => s_current.Value;

    private static CpuIdentity Read()
    {
        var facts = new SortedDictionary<string, string>(StringComparer.Ordinal);
        Dictionary<string, string> cpu = FirstProcessor();
        foreach (string field in (string[])["vendor_id", "cpu family", "model", "model name", "stepping", "microcode", "flags"])
        {
            facts[field] = cpu.GetValueOrDefault(field, "?");
        }
        var caches = new List<string>();
        for (int i = 0; Directory.Exists($"/sys/devices/system/cpu/cpu0/cache/index{i}"); i++)
        {
            string folder = $"/sys/devices/system/cpu/cpu0/cache/index{i}";
            string level = ReadOrEmpty(Path.Combine(folder, "level")), type = ReadOrEmpty(Path.Combine(folder, "type"));
            string size = ReadOrEmpty(Path.Combine(folder, "size"));
            string name = $"L{level}{(type switch { "Data" => "d", "Instruction" => "i", _ => "" })}";
            facts[$"cache {name}"] = size;
            if (type != "Instruction")
            {
                caches.Add($"{name} {size}");
            }
        }
        // Settings that change which kernels oneDNN and MKL pick (ONEDNN_MAX_CPU_ISA, MKL_CBWR, ...).
        foreach (System.Collections.DictionaryEntry entry in Environment.GetEnvironmentVariables())
        {
            string key = (string)entry.Key;
            if (key.StartsWith("ONEDNN_", StringComparison.Ordinal) || key.StartsWith("DNNL_", StringComparison.Ordinal)
                || key.StartsWith("MKL_", StringComparison.Ordinal))
            {
                facts[$"env {key}"] = (string?)entry.Value ?? "";
            }
        }
        string text = string.Join("\n", facts.Select(f => $"{f.Key}={f.Value}"));
        string fingerprint = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)))[..16];
        string description = string.Create(CultureInfo.InvariantCulture,
            $"{facts["model name"]} ({facts["vendor_id"]} family {facts["cpu family"]} model {facts["model"]} stepping {facts["stepping"]}");
        description += caches.Count > 0 ? $"; {string.Join(", ", caches)})" : ")";
        return new CpuIdentity(description, fingerprint);
    }

    private static Dictionary<string, string> FirstProcessor()
    {
        var fields = new Dictionary<string, string>(StringComparer.Ordinal);
        try
        {
            foreach (string line in File.ReadLines("/proc/cpuinfo"))
            {
                if (line.Length == 0)
                {
                    if (fields.Count > 0)
                    {
                        break;
                    }
                    continue;
                }
                int colon = line.IndexOf(':', StringComparison.Ordinal);
                if (colon > 0)
                {
                    fields.TryAdd(line[..colon].Trim(), line[(colon + 1)..].Trim());
                }
            }
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
        if (fields.Count == 0)
        {
            fields["model name"] = System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString();
        }
        return fields;
    }

    private static string ReadOrEmpty(string path)
    {
        try
        {
            return File.ReadAllText(path).Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return "";
        }
    }
}
