using System.Text.Json;
using Cluster.GpuWorker.Devices;
using TorchSharp;

namespace Cluster.GpuWorker.Kernels;

/// <summary>One probe a child process runs: a path on a configuration.</summary>
public sealed record ProbeTask(int Index, ConvolutionConfig Config, ConvolutionPath Path);

/// <summary>What a <see cref="KernelVerifier"/> asks its child process to run.</summary>
public sealed record ProbeRequest(int Threads, IReadOnlyList<ProbeTask> Tasks, IReadOnlyList<InjectedFault> Faults);

/// <summary>
/// `gpu-worker probe-kernels REQUEST.json`: the child process of <see cref="KernelVerifier"/>. It sets up libtorch as a
/// worker does (same heap and NNPACK settings, the lane's thread count), then runs each probe and reports on stdout,
/// one line before a probe starts and one after it ends, so that when a kernel kills the process the parent knows
/// which one did.
/// </summary>
public static class KernelProbeProgram
{
    public const string Command = "probe-kernels";

    /// <summary>Marks this program's lines among whatever else libtorch may print.</summary>
    public const string LinePrefix = "@probe ";

    internal static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web)
    {
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public static int Run(string[] args)
    {
        if (args.Length != 1 || !File.Exists(args[0]))
        {
            Console.Error.WriteLine($"usage: gpu-worker {Command} REQUEST.json (an internal command of the kernel check)");
            return 2;
        }
        ProbeRequest request = JsonSerializer.Deserialize<ProbeRequest>(File.ReadAllText(args[0]), Json)
            ?? throw new InvalidDataException($"{args[0]}: not a probe request");
        TorchRuntime.Initialize();
        // Memory a kernel reads without having written it holds huge values here, so such a kernel fails every probe.
        NativeHeap.PoisonNewBlocks();
        // As a forward lane does: touch the thread's count first, so the one set next sticks.
        torch.get_num_threads();
        torch.set_num_threads(request.Threads);
        Console.Out.Flush();
        foreach (ProbeTask task in request.Tasks)
        {
            Write(new ProbeLine(task.Index, Started: true, Verdict: null));
            try
            {
                ProbeVerdict verdict = KernelProbe.Run(task.Config, task.Path, request.Faults);
                Write(new ProbeLine(task.Index, Started: false, verdict));
            }
            catch (Exception e)
            {
                // Not a kernel's verdict but a fault of the probe itself: the parent stops the check and says so.
                Write(new ProbeLine(task.Index, Started: false, Verdict: null, Error: $"{e.GetType().Name}: {e.Message.Split('\n')[0]}"));
                return 3;
            }
        }
        return 0;
    }

    private static void Write(ProbeLine line)
    {
        Console.Out.Write(LinePrefix + JsonSerializer.Serialize(line, Json) + "\n");
        Console.Out.Flush();
    }
}

/// <summary>One line of a probe process's report.</summary>
public sealed record ProbeLine(int Index, bool Started, ProbeVerdict? Verdict, string? Error = null);
