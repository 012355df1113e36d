using Cluster.GpuWorker.Kernels;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torchvision.models;

namespace Cluster.GpuWorker.Models;

/// <summary>
/// Every architecture the cluster can build, by name. Definitions come from the TorchVision package; this
/// class decomposes each into named steps (taps) and adds the names users know from Keras.
/// </summary>
public static class ModelCatalog
{
    private static readonly Lazy<IReadOnlyList<ArchitectureInfo>> s_all = new(CreateAll);

    public static IReadOnlyList<ArchitectureInfo> All => s_all.Value;

    public static ArchitectureInfo Find(string name) =>
        All.FirstOrDefault(a => string.Equals(a.Name, name?.Trim(), StringComparison.OrdinalIgnoreCase))
        ?? throw new UnknownNameException("architecture", name ?? "", "this cluster", All.Select(a => a.Name));

    private static IReadOnlyList<ArchitectureInfo> CreateAll()
    {
        // Formats for --weights: safetensors, PyTorch .pt/.pth state_dict, TorchSharp (docs/weights.md).
        const string fromFile = "random or --weights FILE";
        var all = new List<ArchitectureInfo>();
        foreach ((string name, long parameters, Func<int, ResNet> build, int[] blocks) in new (string, long, Func<int, ResNet>, int[])[]
        {
            ("resnet18", 11_689_512, n => resnet18(n), [2, 2, 2, 2]),
            ("resnet34", 21_797_672, n => resnet34(n), [3, 4, 6, 3]),
            ("resnet50", 25_557_032, n => resnet50(n), [3, 4, 6, 3]),
            ("resnet101", 44_549_160, n => resnet101(n), [3, 4, 23, 3]),
            ("resnet152", 60_192_808, n => resnet152(n), [3, 8, 36, 3]),
        })
        {
            all.Add(new ArchitectureInfo(name, "resnet", parameters, Preprocessing.ImageNet(), "avgpool", fromFile,
                $"ResNet-{name[6..]} (He et al. 2015), torchvision layout",
                o => ResNetBackbone(name, build(o.NumClasses ?? 1000), blocks, o.IncludeTop)));
        }
        foreach ((string name, long parameters, Func<VGG> build) in new (string, long, Func<VGG>)[]
        {
            ("vgg11", 132_863_336, () => vgg11()), ("vgg11_bn", 132_868_840, () => vgg11_bn()),
            ("vgg13", 133_047_848, () => vgg13()), ("vgg13_bn", 133_053_736, () => vgg13_bn()),
            ("vgg16", 138_357_544, () => vgg16()), ("vgg16_bn", 138_365_992, () => vgg16_bn()),
            ("vgg19", 143_667_240, () => vgg19()), ("vgg19_bn", 143_678_248, () => vgg19_bn()),
        })
        {
            string title = "VGG-" + name[3..].Replace("_bn", " with batch norm", StringComparison.Ordinal);
            all.Add(new ArchitectureInfo(name, "vgg", parameters, Preprocessing.ImageNet(), "block5_pool", fromFile,
                $"{title} (Simonyan & Zisserman 2014); Keras layer names block1_conv1 ... block5_pool, fc1, fc2",
                o => VggBackbone(name, build(), o)));
        }
        all.Add(new ArchitectureInfo("alexnet", "alexnet", 61_100_840, Preprocessing.ImageNet(), "pool5", fromFile,
            "AlexNet (Krizhevsky et al. 2012), torchvision layout; names conv1..conv5, pool1, pool2, pool5, fc6, fc7",
            o => AlexNetBackbone(alexnet(), o)));
        all.Add(new ArchitectureInfo("inception_v3", "inception", 27_161_264, Preprocessing.ImageNet(299), "avgpool", fromFile,
            "Inception v3 (Szegedy et al. 2015) at 299x299; Keras block names mixed0 ... mixed10",
            o => InceptionBackbone(inception_v3(o.NumClasses ?? 1000), o.IncludeTop)));
        all.Add(new ArchitectureInfo("mobilenet_v2", "mobilenet", 3_504_872, Preprocessing.ImageNet(), "avgpool", fromFile,
            "MobileNet v2 (Sandler et al. 2018)",
            o => MobileNetBackbone("mobilenet_v2", mobilenet_v2(o.NumClasses ?? 1000), o.IncludeTop, numClasses: null)));
        all.Add(new ArchitectureInfo("mobilenet_v3_large", "mobilenet", 5_483_032, Preprocessing.ImageNet(), "avgpool", fromFile,
            "MobileNet v3 large (Howard et al. 2019)",
            o => MobileNetBackbone("mobilenet_v3_large", mobilenet_v3_large(), o.IncludeTop, o.NumClasses)));
        all.Add(new ArchitectureInfo("mobilenet_v3_small", "mobilenet", 2_542_856, Preprocessing.ImageNet(), "avgpool", fromFile,
            "MobileNet v3 small (Howard et al. 2019)",
            o => MobileNetBackbone("mobilenet_v3_small", mobilenet_v3_small(), o.IncludeTop, o.NumClasses)));
        // 15.9M parameters as counted from the ONNX file's weights (torchvision's resnet18 without fc has 11.2M; the
        // CNTK export differs, and this figure is what the file holds).
        all.Add(new ArchitectureInfo(BuiltInModels.ResNet18ImageNet, "resnet", 15_897_152,
            BuiltInModels.LoadPreprocessing(BuiltInModels.ResNet18ImageNet), "avgpool",
            "built in: ImageNet-trained (ONNX from Microsoft.ML.DnnImageFeaturizer.ResNet18)",
            "ResNet-18 trained on ImageNet (CNTK export, no classifier): Caffe-style BGR 0-255 minus a mean image",
            o => ImportedBackbone(BuiltInModels.Load(BuiltInModels.ResNet18ImageNet), o)));
        return all;
    }

    /// <summary>
    /// A built-in imported graph as a backbone: its named taps are the steps; the global pool is flattened like
    /// the other architectures' `avgpool`. It has no classifier; a new one (NumClasses) is appended after the pool.
    /// </summary>
    internal static Backbone ImportedBackbone(BuiltInModel builtIn, BackboneOptions options)
    {
        Onnx.OnnxGraphModule network = builtIn.Network;
        var router = new ConvolutionRouter();
        network.Router = router;
        // Parameters each tap adds: those of the graph's nodes it needs that earlier taps did not.
        var counted = new HashSet<string>(StringComparer.Ordinal);
        var parameters = network.named_parameters().ToDictionary(p => p.name, p => p.parameter.numel(), StringComparer.Ordinal);
        var steps = new List<BackboneStep>();
        foreach (ModelTap tap in builtIn.Taps)
        {
            long added = InitializersNeededFor(network, tap.ValueName)
                .Select(i => network.StateDictNames.GetValueOrDefault(i))
                .Where(k => k is not null && parameters.ContainsKey(k) && counted.Add(k))
                .Sum(k => parameters[k!]);
            steps.Add(new BackboneStep(tap.Name, null, x => throw new InvalidOperationException("imported graphs run through graphTo"), Parameters: added));
        }
        string[] values = builtIn.Taps.Select(t => t.ValueName).ToArray();
        Linear? head = options.IncludeTop && options.NumClasses is int n ? nn.Linear(builtIn.Taps[^1].Shape[0], n) : null;
        var children = new List<(string, nn.Module)> { ("network", network) };
        if (head is not null)
        {
            children.Add(("fc", head));
            steps.Add(new BackboneStep("fc", head, head.call, IsClassifier: true));
        }
        int last = builtIn.Taps.Count - 1;
        // The graph's pool output ([N, C, 1, 1], or [N, C] already) flattened like every `avgpool`, then the new
        // classifier when the step asked for is past the pool.
        Tensor PoolAndClassify(Tensor poolOutput, bool classify)
        {
            using Tensor pooled = poolOutput.flatten(1);
            return classify ? head!.call(pooled) : pooled.alias();
        }
        Tensor GraphTo(Tensor image, int step)
        {
            Tensor value = network.Forward(image, values[Math.Min(step, last)]);
            if (step < last)
            {
                return value;
            }
            using (value)
            {
                return PoolAndClassify(value, classify: step > last);
            }
        }
        Tensor GraphFrom(Tensor activations, int step)
        {
            if (step > last)
            {
                return activations.alias();
            }
            if (step == last)
            {
                // After the pool only the new classifier remains (if any).
                return PoolAndClassify(activations, classify: head is not null);
            }
            using Tensor value = network.ForwardFrom(activations, values[step], values[last]);
            return PoolAndClassify(value, classify: head is not null);
        }
        // Several taps from one run of the graph (each value computed once, the shallower kept on the way to the deepest):
        // what extracting many taps in one pass relies on. A step past the pool (the new classifier) runs on its own.
        Dictionary<int, Tensor> GraphTaps(Tensor image, IReadOnlyCollection<int> wanted)
        {
            var inGraph = wanted.Where(s => s <= last).Distinct().ToList();
            var results = new Dictionary<int, Tensor>();
            IReadOnlyDictionary<string, Tensor> byValue = network.ForwardTaps(image, [.. inGraph.Select(s => values[s])]);
            try
            {
                foreach (int step in inGraph)
                {
                    Tensor value = byValue[values[step]];
                    results[step] = step < last ? value.alias() : PoolAndClassify(value, classify: false);
                }
            }
            finally
            {
                foreach (Tensor value in byValue.Values.Distinct())
                {
                    value.Dispose();
                }
            }
            foreach (int step in wanted.Where(s => s > last).Distinct())
            {
                results[step] = GraphTo(image, step);
            }
            return results;
        }
        return new Backbone(builtIn.Name, children, steps, new Dictionary<string, string>(), includeTop: head is not null, router, GraphTo, GraphFrom, GraphTaps);
    }

    private static IEnumerable<string> InitializersNeededFor(Onnx.OnnxGraphModule network, string value)
    {
        var producers = new Dictionary<string, Onnx.OnnxNodeInfo>(StringComparer.Ordinal);
        foreach (Onnx.OnnxNodeInfo node in network.Nodes)
        {
            foreach (string output in node.Outputs)
            {
                producers[output] = node;
            }
        }
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var pending = new Stack<string>([value]);
        while (pending.TryPop(out string? current))
        {
            if (!seen.Add(current))
            {
                continue;
            }
            if (producers.TryGetValue(current, out Onnx.OnnxNodeInfo? node))
            {
                foreach (string input in node.Inputs.Where(i => i.Length > 0))
                {
                    pending.Push(input);
                }
            }
            else
            {
                yield return current;
            }
        }
    }

    private static Func<Tensor, Tensor> Call(nn.Module module) => ((nn.Module<Tensor, Tensor>)module).call;

    private static nn.Module Child(nn.Module parent, string name) =>
        parent.named_children().Single(c => c.name == name).module;

    /// <summary>One step per child of a Sequential (`features.0`, `features.1`, ...).</summary>
    private static IEnumerable<BackboneStep> Expand(string prefix, nn.Module sequential, bool isClassifier = false) =>
        sequential.named_children().Select(c => new BackboneStep($"{prefix}.{c.name}", c.module, Call(c.module), isClassifier));

    /// <summary>A copy of a Sequential whose last Linear is replaced by a new one with <paramref name="numClasses"/> outputs.</summary>
    private static Sequential WithNewHead(nn.Module classifier, int numClasses)
    {
        var children = classifier.named_children().ToList();
        int last = children.FindLastIndex(c => c.module is Linear);
        var old = (Linear)children[last].module;
        children[last] = (children[last].name, nn.Linear(old.weight!.shape[1], numClasses));
        return nn.Sequential(children.Select(c => (c.name, (nn.Module<Tensor, Tensor>)c.module)).ToArray());
    }

    internal static Backbone ResNetBackbone(string name, ResNet model, int[] blocks, bool includeTop)
    {
        ConvolutionRouter router = Routed(model);
        var steps = new List<BackboneStep>
        {
            new("conv1", Child(model, "conv1"), Call(Child(model, "conv1"))),
            new("bn1", Child(model, "bn1"), Call(Child(model, "bn1"))),
            new("relu", Child(model, "relu"), Call(Child(model, "relu"))),
            new("maxpool", Child(model, "maxpool"), Call(Child(model, "maxpool"))),
        };
        var aliases = new Dictionary<string, string> { ["stem"] = "maxpool", ["conv1_relu"] = "relu", ["pool1_pool"] = "maxpool" };
        for (int stage = 1; stage <= 4; stage++)
        {
            steps.AddRange(Expand($"layer{stage}", Child(model, $"layer{stage}")));
            string lastBlock = $"layer{stage}.{blocks[stage - 1] - 1}";
            aliases[$"layer{stage}"] = lastBlock;
            // He et al.'s stage names (conv2_x ... conv5_x) and Keras' block outputs (conv4_block6_out).
            aliases[$"conv{stage + 1}_x"] = lastBlock;
            for (int block = 0; block < blocks[stage - 1]; block++)
            {
                aliases[$"conv{stage + 1}_block{block + 1}_out"] = $"layer{stage}.{block}";
            }
        }
        nn.Module avgpool = Child(model, "avgpool");
        steps.Add(new("avgpool", avgpool, x =>
        {
            using Tensor pooled = Call(avgpool)(x);
            return pooled.flatten(1);
        }));
        aliases["avg_pool"] = "avgpool";
        var children = model.named_children().ToList();
        if (includeTop)
        {
            steps.Add(new("fc", Child(model, "fc"), Call(Child(model, "fc")), IsClassifier: true));
            aliases["predictions"] = "fc";
        }
        else
        {
            children.RemoveAll(c => c.name == "fc");
        }
        return new Backbone(name, children, steps, aliases, includeTop, router);
    }

    internal static Backbone VggBackbone(string name, VGG model, BackboneOptions options)
    {
        ConvolutionRouter router = Routed(model);
        nn.Module features = Child(model, "features");
        var steps = new List<BackboneStep>(Expand("features", features));
        var aliases = new Dictionary<string, string>();
        // Keras names each conv by block and position; its conv layers include the ReLU, so the alias
        // points at the ReLU step after the conv (and after the batch norm in the _bn variants).
        int block = 1, conv = 0;
        foreach ((string child, nn.Module module) in features.named_children())
        {
            switch (module)
            {
                case RoutedConv2d:
                    conv++;
                    break;
                case ReLU:
                    aliases[$"block{block}_conv{conv}"] = $"features.{child}";
                    break;
                case MaxPool2d:
                    aliases[$"block{block}_pool"] = $"features.{child}";
                    block++;
                    conv = 0;
                    break;
            }
        }
        AddClassifierSteps(model, steps, aliases, options, new() { ["fc1"] = 1, ["fc2"] = 4, ["predictions"] = 6 });
        return new Backbone(name, ChildrenFor(model, options), steps, aliases, options.IncludeTop, router);
    }

    internal static Backbone AlexNetBackbone(AlexNet model, BackboneOptions options)
    {
        ConvolutionRouter router = Routed(model);
        nn.Module features = Child(model, "features");
        var steps = new List<BackboneStep>(Expand("features", features));
        var aliases = new Dictionary<string, string>
        {
            ["conv1"] = "features.1", ["pool1"] = "features.2", ["conv2"] = "features.4", ["pool2"] = "features.5",
            ["conv3"] = "features.7", ["conv4"] = "features.9", ["conv5"] = "features.11", ["pool5"] = "features.12",
        };
        AddClassifierSteps(model, steps, aliases, options, new() { ["fc6"] = 2, ["fc7"] = 5, ["fc8"] = 6 });
        return new Backbone("alexnet", ChildrenFor(model, options), steps, aliases, options.IncludeTop, router);
    }

    /// <summary>avgpool, flatten and (with the top) the classifier's steps, for VGG and AlexNet.</summary>
    private static void AddClassifierSteps(
        nn.Module model, List<BackboneStep> steps, Dictionary<string, string> aliases, BackboneOptions options, Dictionary<string, int> classifierAliases)
    {
        steps.Add(new("avgpool", Child(model, "avgpool"), Call(Child(model, "avgpool"))));
        steps.Add(new("flatten", null, x => x.flatten(1)));
        if (!options.IncludeTop)
        {
            return;
        }
        steps.AddRange(Expand("classifier", ClassifierFor(model, options), isClassifier: true));
        foreach ((string alias, int index) in classifierAliases)
        {
            aliases[alias] = $"classifier.{index}";
        }
    }

    private static nn.Module ClassifierFor(nn.Module model, BackboneOptions options) =>
        options.NumClasses is int n ? WithNewHead(Child(model, "classifier"), n) : Child(model, "classifier");

    /// <summary>The model's children with the classifier replaced (new head) or dropped (no top).</summary>
    private static List<(string, nn.Module)> ChildrenFor(nn.Module model, BackboneOptions options)
    {
        var children = model.named_children().Select(c => (c.name, c.module)).ToList();
        int index = children.FindIndex(c => c.name == "classifier");
        if (!options.IncludeTop)
        {
            children.RemoveAt(index);
        }
        else if (options.NumClasses is not null)
        {
            children[index] = ("classifier", ClassifierFor(model, options));
        }
        return children;
    }

    internal static Backbone InceptionBackbone(InceptionV3 model, bool includeTop)
    {
        ConvolutionRouter router = Routed(model);
        string[] mixed = ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"];
        var steps = new List<BackboneStep>();
        foreach (string child in new[] { "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2" }.Concat(mixed))
        {
            steps.Add(new(child, Child(model, child), Call(Child(model, child))));
        }
        nn.Module avgpool = Child(model, "avgpool");
        steps.Add(new("avgpool", avgpool, x =>
        {
            using Tensor pooled = Call(avgpool)(x);
            return pooled.flatten(1);
        }));
        var aliases = mixed.Select((m, i) => (Alias: $"mixed{i}", Step: m)).ToDictionary(x => x.Alias, x => x.Step);
        aliases["avg_pool"] = "avgpool";
        var children = model.named_children().ToList();
        if (includeTop)
        {
            steps.Add(new("dropout", Child(model, "dropout"), Call(Child(model, "dropout")), IsClassifier: true));
            steps.Add(new("fc", Child(model, "fc"), Call(Child(model, "fc")), IsClassifier: true));
            aliases["predictions"] = "fc";
        }
        else
        {
            children.RemoveAll(c => c.name is "fc" or "dropout" or "AuxLogits");
        }
        // AuxLogits stays registered with the top (its weights are in torchvision checkpoints) but never runs:
        // it only feeds an auxiliary loss in training, which this cluster does not use.
        return new Backbone("inception_v3", children, steps, aliases, includeTop, router);
    }

    internal static Backbone MobileNetBackbone(string name, nn.Module model, bool includeTop, int? numClasses)
    {
        ConvolutionRouter router = Routed(model);
        nn.Module features = Child(model, "features");
        var steps = new List<BackboneStep>(Expand("features", features));
        var children = model.named_children().Select(c => (c.name, c.module)).ToList();
        nn.Module? avgpool = children.Any(c => c.name == "avgpool") ? Child(model, "avgpool") : null;
        // MobileNet v2 pools functionally in its forward; v3 has an AdaptiveAvgPool2d child.
        steps.Add(new("avgpool", avgpool, x =>
        {
            using Tensor pooled = avgpool is null ? nn.functional.adaptive_avg_pool2d(x, [1, 1]) : Call(avgpool)(x);
            return pooled.flatten(1);
        }));
        var aliases = new Dictionary<string, string> { ["out_relu"] = steps[^2].Name, ["global_average_pooling2d"] = "avgpool" };
        int index = children.FindIndex(c => c.name == "classifier");
        if (includeTop)
        {
            nn.Module classifier = numClasses is int n ? WithNewHead(children[index].module, n) : children[index].module;
            children[index] = ("classifier", classifier);
            steps.AddRange(Expand("classifier", classifier, isClassifier: true));
            aliases["predictions"] = steps[^1].Name;
        }
        else
        {
            children.RemoveAt(index);
        }
        return new Backbone(name, children, steps, aliases, includeTop, router);
    }

    /// <summary>Every convolution of <paramref name="model"/> routed through one new router (before its steps are taken).</summary>
    private static ConvolutionRouter Routed(nn.Module model)
    {
        var router = new ConvolutionRouter();
        ConvolutionRerouting.Install(model, router);
        return router;
    }
}
