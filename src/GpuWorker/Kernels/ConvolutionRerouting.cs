using System.Reflection;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Kernels;

/// <summary>
/// Replaces every TorchVision <see cref="Conv2d"/> in a module tree by a <see cref="RoutedConv2d"/> on one router, so
/// that no convolution of a model bypasses the kernel check. PyTorch code does this with setattr; TorchSharp's models
/// hold their children in private fields (typed as the Module base class) and Sequential in a private list, so this
/// sets those by reflection. It is written for the pinned TorchSharp (0.107) and fails loudly, not silently, if a
/// future version holds modules differently: afterwards no Conv2d may be reachable, and the state_dict keys must be
/// exactly what they were.
/// </summary>
public static class ConvolutionRerouting
{
    private const BindingFlags InstanceFields = BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly;

    /// <summary>Routes every Conv2d under <paramref name="root"/> through <paramref name="router"/>; returns how many were replaced.</summary>
    public static int Install(nn.Module root, ConvolutionRouter router)
    {
        ArgumentNullException.ThrowIfNull(root);
        ArgumentNullException.ThrowIfNull(router);
        if (root is Conv2d)
        {
            throw new ArgumentException("the root itself is a Conv2d; wrap it in a module first", nameof(root));
        }
        string[] keysBefore = [.. root.state_dict().Keys];
        int replaced = Replace(root, router);
        string[] keysAfter = [.. root.state_dict().Keys];
        if (!keysBefore.SequenceEqual(keysAfter))
        {
            throw new InvalidOperationException(
                $"routing the convolutions of '{root.GetName()}' changed its state_dict keys (before: {keysBefore.Length}, after: {keysAfter.Length}); this TorchSharp holds modules differently than 0.107 did");
        }
        string? left = root.named_modules().FirstOrDefault(m => m.module is Conv2d).name;
        if (left is not null)
        {
            throw new InvalidOperationException($"'{left}' of '{root.GetName()}' is still an unrouted Conv2d; this TorchSharp holds modules differently than 0.107 did");
        }
        return replaced;
    }

    private static int Replace(nn.Module parent, ConvolutionRouter router)
    {
        int replaced = 0;
        foreach ((string name, nn.Module child) in parent.named_children().ToList())
        {
            if (child is Conv2d conv)
            {
                SetChild(parent, name, conv, new RoutedConv2d(conv, router));
                replaced++;
            }
            else
            {
                replaced += Replace(child, router);
            }
        }
        return replaced;
    }

    private static void SetChild(nn.Module parent, string name, nn.Module old, nn.Module replacement)
    {
        bool set = false;
        if (parent is Sequential)
        {
            // Sequential keeps its children in a list, which its forward pass walks.
            var list = (System.Collections.IList?)FieldOf(typeof(Sequential), "_modules").GetValue(parent)
                ?? throw new InvalidOperationException("Sequential._modules is null");
            int index = IndexOf(list, old);
            if (index >= 0)
            {
                list[index] = replacement;
                set = true;
            }
        }
        else
        {
            for (Type? type = parent.GetType(); type is not null && type != typeof(nn.Module); type = type.BaseType)
            {
                foreach (FieldInfo field in type.GetFields(InstanceFields).Where(f => ReferenceEquals(f.GetValue(parent), old)))
                {
                    if (!field.FieldType.IsInstanceOfType(replacement))
                    {
                        throw new InvalidOperationException(
                            $"{type.Name}.{field.Name} is declared as {field.FieldType.Name} and cannot hold a routed convolution");
                    }
                    field.SetValue(parent, replacement);
                    set = true;
                }
            }
        }
        // The registry behind named_children(), state_dict() and .to(): replaced in place, so the order of keys stays.
        var registry = (TorchSharp.Utils.OrderedDict<string, nn.Module>?)FieldOf(typeof(nn.Module), "_internal_submodules").GetValue(parent);
        if (registry is not null && registry.ContainsKey(name))
        {
            for (int i = 0; i < registry.Count; i++)
            {
                if (registry[i].Item1 == name)
                {
                    registry[i] = (name, replacement);
                    break;
                }
            }
        }
        if (!set)
        {
            throw new InvalidOperationException($"cannot find where {parent.GetType().Name} holds its convolution '{name}'");
        }
    }

    private static int IndexOf(System.Collections.IList list, object item)
    {
        for (int i = 0; i < list.Count; i++)
        {
            if (ReferenceEquals(list[i], item))
            {
                return i;
            }
        }
        return -1;
    }

    private static FieldInfo FieldOf(Type type, string name) =>
        type.GetField(name, BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public)
        ?? throw new InvalidOperationException($"{type.Name}.{name} does not exist in this TorchSharp (written for 0.107)");
}
