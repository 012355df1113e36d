using Cluster.Coordinator.Specs;
using Cluster.Hosting;
using Shouldly;

namespace Cluster.Coordinator.Tests.Specs;

public sealed class SweepSpecTests
{
    private static readonly string s_base = Path.Combine(Path.GetTempPath(), "specs");

    /// <summary>The three lines every spec needs; the first extra line is line 4.</summary>
    private static string Spec(params string[] lines) =>
        string.Join('\n', new[] { "name: test", "dataset:", "  train: train" }.Concat(lines)) + "\n";

    private static SweepSpec Parse(string yaml) => SweepSpec.Parse(yaml, "spec.yaml", s_base);

    private static string Error(string yaml)
    {
        string message = Should.Throw<SpecException>(() => Parse(yaml)).Message;
        message.ShouldNotContain("\n");
        return message;
    }

    [Fact]
    public void The_design_example_parses_with_its_lists_and_distribution()
    {
        SweepSpec spec = SweepSpec.Load(Path.Combine(ExamplesFolder(), "fashion-transfer.yaml"));

        spec.Name.ShouldBe("fashion-transfer");
        spec.Dataset.Train.Text.ShouldBe("data/fashion/train");
        spec.Dataset.ValidationFraction.ShouldBe(0.1);
        spec.Dataset.ValidationPath.ShouldBeNull();
        spec.Dataset.Test!.Text.ShouldBe("data/fashion/test");
        spec.Strategy.Kind.ShouldBe(SpecValueKind.List);
        spec.Strategy.Values.ShouldBe(["feature-extractor", "fine-tune-top", "fine-tune-all"]);
        spec.Cutoff!.Values.ShouldBe(["layer3", "layer4"]);
        spec.Head.Values.ShouldBe(["logistic", "mlp"]);
        spec.Lr.Kind.ShouldBe(SpecValueKind.LogUniform);
        (spec.Lr.Low, spec.Lr.High).ShouldBe((1e-4, 1e-2));
        spec.Lr.Count.ShouldBeNull();
        spec.InputSize!.Single.ShouldBe(64);
        spec.BackboneLrScale!.Single.ShouldBe(0.1);
        (spec.Optimizer.Name.Single, spec.Optimizer.Momentum.Single, spec.Optimizer.WeightDecay.Single).ShouldBe(("sgd", 0.9, 0.0));
        spec.Schedule.Single.ShouldBe("cosine");
        spec.Seed.Single.ShouldBe(7L);
        spec.Search.Method.ShouldBe("grid");
        (spec.Metric.Name, spec.Metric.Mode).ShouldBe(("val_accuracy", "max"));
        spec.Parallelism.ShouldBe(4);
        spec.Budget.StorageBytes.ShouldBe(20L << 30);
        spec.Budget.WallTime.ShouldBe(TimeSpan.FromHours(2));
        spec.IsSingleTrial.ShouldBeFalse();
    }

    [Fact]
    public void A_one_value_spec_gives_its_trial_with_the_defaults()
    {
        SweepSpec spec = Parse(Spec("strategy: fine-tune-top", "cutoff: layer3", "epochs: 4"));

        spec.IsSingleTrial.ShouldBeTrue();
        TrialChoice trial = spec.SingleTrial();
        trial.ShouldBe(new TrialChoice
        {
            Model = "resnet18-imagenet",
            Weights = SpecWeights.Builtin,
            InputSize = 224,
            Strategy = "fine-tune-top",
            Cutoff = "layer3",
            Head = "logistic",
            Lr = 0.001,
            Optimizer = "sgd",
            Momentum = 0.9,
            WeightDecay = 0,
            Schedule = "constant",
            StepEpochs = 10,
            StepGamma = 0.1,
            Epochs = 4,
            BatchSize = 32,
            Augment = "none",
            Precision = "fp32",
            Seed = 0,
            HeadEpochs = 3,
        });
        spec.SegmentEpochs.ShouldBe(2);
        spec.Parallelism.ShouldBe(1);
        spec.Dataset.ValidationFraction.ShouldBe(0.1);
        (spec.Search.Method, spec.Metric.Name, spec.Metric.Mode).ShouldBe(("grid", "val_accuracy", "max"));
        spec.Budget.ShouldBe(BudgetSpec.None);
    }

    [Fact]
    public void Without_a_cutoff_fine_tune_top_on_a_resnet_cuts_at_layer3_and_feature_extraction_at_the_default_tap()
    {
        Parse(Spec()).SingleTrial().Cutoff.ShouldBe("layer3");
        Parse(Spec("strategy: feature-extractor")).SingleTrial().Cutoff.ShouldBe("avgpool");
        Parse(Spec("strategy: fine-tune-all")).SingleTrial().Cutoff.ShouldBeNull();
    }

    [Fact]
    public void Fine_tune_top_without_a_cutoff_on_a_model_that_is_not_a_resnet_names_the_strategy_line()
    {
        string message = Error(Spec("model: vgg16", "weights: random", "strategy: [feature-extractor, fine-tune-top]"));

        message.ShouldStartWith("spec.yaml line 6: strategy fine-tune-top needs a cutoff for model vgg16");
        Error(Spec("model: vgg16", "weights: random")).ShouldStartWith(
            "spec.yaml line 4: strategy fine-tune-top (the default) needs a cutoff for model vgg16");
    }

    [Fact]
    public void Params_name_each_trial_value_by_its_spec_field()
    {
        TrialChoice trial = Parse(Spec("strategy: feature-extractor", "head: mlp", "lr: 0.01", "patience: 2")).SingleTrial();

        IReadOnlyDictionary<string, object> values = SweepSpec.Params(trial);

        values["model"].ShouldBe("resnet18-imagenet");
        values["strategy"].ShouldBe("feature-extractor");
        values["cutoff"].ShouldBe("avgpool");
        values["head"].ShouldBe("mlp");
        values["lr"].ShouldBe(0.01);
        values["epochs"].ShouldBe(6);
        values["patience"].ShouldBe(2);
        values["weights"].ShouldBe("builtin");
        values.ShouldNotContainKey("backbone_lr_scale");
    }

    [Fact]
    public void A_sweep_of_several_trials_is_refused_as_one_trial_naming_the_first_field_with_several_values()
    {
        SweepSpec spec = Parse(Spec("model: resnet18-imagenet", "strategy:", "  - feature-extractor", "  - fine-tune-top", "  - fine-tune-all"));

        string message = Should.Throw<SpecException>(spec.SingleTrial).Message;

        message.ShouldBe("spec.yaml line 5: strategy has 3 values; `sweep run` of a multi-trial sweep comes with the search methods (issue 11)");
    }

    [Fact]
    public void A_distribution_is_refused_as_one_trial()
    {
        SweepSpec spec = Parse(Spec("lr: {uniform: [0.001, 0.01]}"));

        spec.IsSingleTrial.ShouldBeFalse();
        Should.Throw<SpecException>(spec.SingleTrial).Message.ShouldStartWith("spec.yaml line 4: lr is a uniform distribution");
    }

    [Fact]
    public void An_unknown_field_names_its_line_and_the_allowed_fields()
    {
        string message = Error(Spec("epochs: 3", "stratgy: fine-tune-top"));

        message.ShouldStartWith("spec.yaml line 5: unknown field 'stratgy'; allowed: name, dataset, model,");
        message.ShouldContain("strategy");
        message.ShouldContain("budget");
    }

    [Theory]
    [InlineData("dataset", "tset", "train, validation, test")]
    [InlineData("optimizer", "nesterov", "name, momentum, weight_decay")]
    [InlineData("search", "trails", "method, trials, min_epochs, reduction")]
    [InlineData("metric", "goal", "name, mode")]
    [InlineData("budget", "gpus", "storage, wall_time, activations")]
    public void An_unknown_field_inside_a_section_names_the_section_and_its_fields(string section, string field, string allowed)
    {
        string yaml = section == "dataset"
            ? $"name: test\ndataset:\n  train: train\n  {field}: x\n"
            : Spec($"{section}:", $"  {field}: x");
        int line = section == "dataset" ? 4 : 5;

        Error(yaml).ShouldBe($"spec.yaml line {line}: unknown field '{section}.{field}'; allowed in {section}: {allowed}");
    }

    [Fact]
    public void An_unknown_strategy_names_its_line_value_and_the_allowed_ones()
    {
        Error(Spec("model: resnet18-imagenet", "epochs: 2", "", "strategy: fine-tune-everything")).ShouldBe(
            "spec.yaml line 7: strategy 'fine-tune-everything' is not one of: feature-extractor, fine-tune-top, fine-tune-all, from-scratch, auto");
    }

    [Fact]
    public void An_unknown_head_in_a_list_names_the_line_of_that_value()
    {
        Error(Spec("head:", "  - logistic", "  - svm")).ShouldBe(
            "spec.yaml line 6: head 'svm' is not one of: logistic, mlp, knn, sdca, lightgbm");
    }

    [Theory]
    [InlineData("optimizer: rmsprop")]
    [InlineData("optimizer: {name: rmsprop, momentum: 0.9}")]
    [InlineData("optimizer: {choice: [sgd, rmsprop]}")]
    public void An_unknown_optimizer_names_its_line_value_and_the_allowed_ones(string line)
    {
        Error(Spec(line)).ShouldBe("spec.yaml line 4: optimizer 'rmsprop' is not one of: sgd, adam, adamw");
    }

    [Fact]
    public void An_optimizer_given_by_name_alone_keeps_the_default_momentum_and_weight_decay()
    {
        SweepSpec spec = Parse(Spec("optimizer: [adam, adamw]"));

        spec.Optimizer.Name.Values.ShouldBe(["adam", "adamw"]);
        spec.Optimizer.Momentum.Single.ShouldBe(0.9);
        spec.Optimizer.WeightDecay.Single.ShouldBe(0);
    }

    [Fact]
    public void A_cutoff_that_is_not_a_layer_of_the_model_lists_the_layers_it_has()
    {
        string message = Error(Spec("model: resnet18-imagenet", "cutoff: [layer3, block4_pool]"));

        message.ShouldStartWith("spec.yaml line 5: cutoff 'block4_pool' is not a layer of resnet18-imagenet; allowed: ");
        foreach (string layer in new[] { "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool" })
        {
            message.ShouldContain(layer);
        }
    }

    [Fact]
    public void A_cutoff_at_the_model_s_last_layer_is_refused_for_fine_tune_top_only()
    {
        Error(Spec("strategy: fine-tune-top", "cutoff: avgpool")).ShouldStartWith(
            "spec.yaml line 5: cutoff 'avgpool' is the last layer of resnet18-imagenet, so fine-tune-top would train nothing");

        Parse(Spec("strategy: feature-extractor", "cutoff: avgpool")).SingleTrial().Cutoff.ShouldBe("avgpool");
    }

    [Theory]
    [InlineData("0")]
    [InlineData("-1")]
    [InlineData("fast")]
    [InlineData(".inf")]
    public void A_learning_rate_that_is_not_positive_names_its_line_and_value(string lr)
    {
        string shown = lr is "fast" or ".inf" ? $"'{lr}'" : lr;

        Error(Spec("epochs: 2", $"lr: {lr}")).ShouldBe($"spec.yaml line 5: lr {shown} must be a positive number");
    }

    [Theory]
    [InlineData("epochs: 0", "epochs 0 must be a whole number of at least 1")]
    [InlineData("epochs: 2.5", "epochs 2.5 must be a whole number of at least 1")]
    [InlineData("batch_size: 0", "batch_size 0 must be a whole number from 1 to 4096")]
    [InlineData("batch_size: 8192", "batch_size 8192 must be a whole number from 1 to 4096")]
    [InlineData("input_size: 8", "input_size 8 must be a whole number of pixels from 16 to 1024")]
    [InlineData("optimizer: {momentum: 1}", "optimizer.momentum 1 must be a number in [0, 1)")]
    [InlineData("optimizer: {weight_decay: -0.1}", "optimizer.weight_decay -0.1 must be a number of 0 or more")]
    [InlineData("backbone_lr_scale: 0", "backbone_lr_scale 0 must be a positive number")]
    [InlineData("head_epochs: -1", "head_epochs -1 must be a whole number of 0 or more")]
    [InlineData("patience: 0", "patience 0 must be a whole number of at least 1")]
    [InlineData("segment_epochs: 0", "segment_epochs 0 must be a whole number of at least 1")]
    [InlineData("seed: 1.5", "seed 1.5 must be a whole number of 0 or more")]
    [InlineData("parallelism: 0", "parallelism 0 must be a whole number of at least 1")]
    [InlineData("schedule: linear", "schedule 'linear' is not one of: constant, step, cosine")]
    [InlineData("augment: rotate", "augment 'rotate' is not one of: none, flip, crop-flip")]
    [InlineData("precision: fp16", "precision 'fp16' is not one of: fp32, bf16")]
    [InlineData("search: {method: bayes}", "search.method 'bayes' is not one of: grid, random, asha")]
    [InlineData("search: {method: random, trials: 0}", "search.trials 0 must be a whole number from 1 to 100,000")]
    [InlineData("search: {method: random, trials: 1000000000000}", "search.trials 1000000000000 must be a whole number from 1 to 100,000")]
    [InlineData("epochs: -3", "epochs -3 must be a whole number of at least 1")]
    [InlineData("metric: {name: accuracy}", "metric.name 'accuracy' is not one of: val_accuracy, val_loss")]
    [InlineData("metric: {name: val_loss, mode: max}", "metric.mode 'max' with metric val_loss: val_loss is better lower, so mode must be min")]
    [InlineData("model: resnet19", "model 'resnet19' is not one of: resnet18, resnet34,")]
    [InlineData("model: resnet50", "weights builtin: model resnet50 has none")]
    [InlineData("weights: biultin", "weights 'biultin' is not one of: builtin, random, or a weights file")]
    [InlineData("budget: {storage: 20 parsecs}", "budget.storage '20 parsecs' must be a positive size with a unit")]
    [InlineData("budget: {wall_time: 2 weeks}", "budget.wall_time '2 weeks' must be a positive duration in d, h, m or s")]
    [InlineData("budget: {storage: 1GiB, activations: int8}", "budget.activations 'int8' is not one of: fp32, bf16, fp16, auto")]
    public void A_value_out_of_its_range_names_its_line_field_value_and_what_is_allowed(string line, string problem)
    {
        Error(Spec(line)).ShouldStartWith($"spec.yaml line 4: {problem}");
    }

    [Fact]
    public void A_log_uniform_lower_bound_of_zero_or_less_names_the_bound()
    {
        Error(Spec("lr: {log_uniform: [0.0, 0.01]}")).ShouldBe("spec.yaml line 4: lr 0.0 must be a positive number");
        Error(Spec("optimizer:", "  weight_decay: {log_uniform: [0, 0.1]}")).ShouldBe(
            "spec.yaml line 5: optimizer.weight_decay log_uniform [0, 0.1]: the lower bound must be above 0 (a logarithm is taken)");
    }

    [Fact]
    public void A_uniform_whose_lower_bound_is_above_the_upper_names_both()
    {
        Error(Spec("epochs: 2", "lr:", "  uniform: [0.1, 0.01]")).ShouldBe(
            "spec.yaml line 6: lr uniform [0.1, 0.01]: the lower bound must be below the upper one");
    }

    [Fact]
    public void A_numeric_distribution_over_names_or_an_unknown_one_is_refused()
    {
        Error(Spec("strategy: {uniform: [1, 2]}")).ShouldStartWith("spec.yaml line 4: strategy uniform: strategy takes names, not numbers");
        Error(Spec("lr: {normal: [0, 1]}")).ShouldStartWith("spec.yaml line 4: lr {normal} is not a distribution; a mapping here must be one of:");
    }

    [Fact]
    public void Every_hyperparameter_may_be_a_list_or_a_distribution()
    {
        SweepSpec spec = Parse(Spec(
            "epochs: {choice: [2, 4]}",
            "batch_size: [16, 32, 64]",
            "optimizer: {name: [sgd, adam], momentum: {uniform: [0.8, 0.95]}}",
            "seed: [1, 2]"));

        spec.Epochs.Kind.ShouldBe(SpecValueKind.Choice);
        spec.Epochs.Values.ShouldBe([2, 4]);
        spec.BatchSize.Count.ShouldBe(3);
        spec.Optimizer.Name.Values.ShouldBe(["sgd", "adam"]);
        (spec.Optimizer.Momentum.Kind, spec.Optimizer.Momentum.Low, spec.Optimizer.Momentum.High).ShouldBe((SpecValueKind.Uniform, 0.8, 0.95));
        spec.Seed.Values.ShouldBe([1L, 2L]);
    }

    [Theory]
    [InlineData("1.5")]
    [InlineData("0")]
    [InlineData("1")]
    public void A_validation_fraction_outside_zero_to_one_names_its_line(string fraction)
    {
        Error($"name: test\ndataset:\n  train: train\n  validation: {fraction}\n").ShouldBe(
            $"spec.yaml line 4: dataset.validation {fraction} must be a fraction of train in (0, 1), or a folder");
    }

    [Fact]
    public void A_spec_file_of_megabytes_is_refused_by_its_size_before_it_is_read()
    {
        string path = Path.Combine(Path.GetTempPath(), $"huge-spec-{Guid.NewGuid():N}.yaml");
        // A valid beginning and a learning-rate list of ten megabytes: refused by size, not parsed.
        File.WriteAllText(path, Spec("lr: [" + string.Join(", ", Enumerable.Repeat("0.001", 1_700_000)) + "]"));
        try
        {
            string message = Should.Throw<SpecException>(() => SweepSpec.Load(path)).Message;
            message.ShouldStartWith($"{path}: the spec is 11.3 MiB; a sweep spec is at most 1024 KiB");
            message.ShouldNotContain("0.001");
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void Malformed_yaml_is_one_line_with_the_line_where_it_breaks()
    {
        string message = Error("name: test\ndataset:\n  train: train\nstrategy: [feature-extractor, fine-tune-top\nepochs: 3\n");

        // YamlDotNet's scanner stops where the next line begins without the list's ']'.
        message.ShouldStartWith("spec.yaml line 5: malformed YAML: ");
        Error(Spec("lr: {uniform: [1, 2}")).ShouldBe(
            "spec.yaml line 4: malformed YAML: While parsing a flow sequence, did not find expected ',' or ']'.");
    }

    [Fact]
    public void Bad_indentation_is_malformed_yaml_at_its_line()
    {
        Error("name: test\ndataset:\n  train: train\n   test: test\n").ShouldStartWith("spec.yaml line 4: malformed YAML: ");
    }

    [Fact]
    public void A_tab_in_the_indentation_is_malformed_yaml_at_the_line_of_the_tab()
    {
        Error("name: test\nepochs: 2\ndataset:\n\ttrain: train\n").ShouldStartWith("spec.yaml line 4: malformed YAML: ");
    }

    [Fact]
    public void A_field_given_twice_is_refused_at_its_second_line()
    {
        Error(Spec("epochs: 2", "epochs: 3")).ShouldBe("spec.yaml line 5: malformed YAML: Duplicate key epochs");
    }

    [Fact]
    public void Missing_name_or_train_is_named()
    {
        Error("dataset:\n  train: train\n").ShouldStartWith("spec.yaml line 1: name is required");
        Error("name: test\ndataset:\n  test: test\n").ShouldStartWith("spec.yaml line 2: dataset.train is required");
        Error("").ShouldStartWith("spec.yaml line 1: the spec is empty");
    }

    [Fact]
    public void Relative_paths_are_resolved_from_the_spec_folder_and_keep_their_text()
    {
        string absolute = Path.Combine(Path.GetTempPath(), "elsewhere", "test");
        SweepSpec spec = Parse($"name: test\ndataset:\n  train: data/train\n  validation: ../val\n  test: {absolute}\nweights: weights/resnet.pth\n");

        spec.Dataset.Train.ShouldBe(new SpecPath("data/train", Path.Combine(s_base, "data", "train")));
        spec.Dataset.ValidationPath.ShouldBe(new SpecPath("../val", Path.Combine(Path.GetTempPath(), "val")));
        spec.Dataset.ValidationFraction.ShouldBeNull();
        spec.Dataset.Test!.FullPath.ShouldBe(absolute);
        spec.Weights.Single.ShouldBe(new SpecWeights(SpecWeightsKind.File, "weights/resnet.pth", Path.Combine(s_base, "weights", "resnet.pth")));
    }

    [Fact]
    public void A_quoted_number_as_validation_is_a_folder()
    {
        Parse("name: test\ndataset:\n  train: train\n  validation: '0.2'\n").Dataset.ValidationPath!.Text.ShouldBe("0.2");
    }

    [Fact]
    public void Loading_a_spec_file_resolves_paths_from_its_folder()
    {
        string folder = Directory.CreateTempSubdirectory("sweep-spec-tests-").FullName;
        try
        {
            string path = Path.Combine(folder, "spec.yaml");
            File.WriteAllText(path, Spec());

            SweepSpec spec = SweepSpec.Load(path);

            spec.Dataset.Train.FullPath.ShouldBe(Path.Combine(folder, "train"));
            spec.Source.ShouldBe(path);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void Budget_sizes_and_durations_are_parsed_with_their_units()
    {
        SweepSpec spec = Parse(Spec("budget: {storage: 500MB, wall_time: 1h30m}"));

        spec.Budget.StorageBytes.ShouldBe(500_000_000L);
        spec.Budget.WallTime.ShouldBe(TimeSpan.FromMinutes(90));
        Parse(Spec("budget: {wall_time: 90s}")).Budget.WallTime.ShouldBe(TimeSpan.FromSeconds(90));
        spec.Budget.Activations.ShouldBe("fp32", "stored activations stay exact unless the spec says otherwise");
        Parse(Spec("budget: {storage: 2GiB, activations: auto}")).Budget.Activations.ShouldBe("auto");
    }

    [Fact]
    public void A_spec_error_is_a_configuration_error_the_cli_prints_as_one_line()
    {
        Should.Throw<SpecException>(() => Parse(Spec("lr: 0"))).ShouldBeAssignableTo<ClusterConfigurationException>();
    }

    [Fact]
    public void Every_example_spec_parses()
    {
        string[] examples = Directory.GetFiles(ExamplesFolder(), "*.yaml");

        examples.Length.ShouldBeGreaterThanOrEqualTo(3);
        foreach (string example in examples)
        {
            SweepSpec spec = SweepSpec.Load(example);
            spec.Name.ShouldBe(Path.GetFileNameWithoutExtension(example));
        }
        SweepSpec.Load(Path.Combine(ExamplesFolder(), "fashion-one-trial.yaml")).SingleTrial().ShouldSatisfyAllConditions(
            t => t.Strategy.ShouldBe("fine-tune-top"),
            t => t.Cutoff.ShouldBe("layer3"),
            t => t.InputSize.ShouldBe(64),
            t => t.Epochs.ShouldBe(4));
        // The reference material's fine-tuning recipe, as its comment says.
        SweepSpec.Load(Path.Combine(ExamplesFolder(), "vgg16-fine-tune-recipe.yaml")).SingleTrial().ShouldSatisfyAllConditions(
            t => t.Model.ShouldBe("vgg16"),
            t => t.Strategy.ShouldBe("fine-tune-top"),
            t => t.Cutoff.ShouldBe("block4_pool"),
            t => t.InputSize.ShouldBe(150),
            t => t.BatchSize.ShouldBe(16),
            t => t.Lr.ShouldBe(1e-4),
            t => t.Optimizer.ShouldBe("sgd"),
            t => t.Momentum.ShouldBe(0.9),
            t => t.HeadEpochs.ShouldBeGreaterThan(0),
            t => t.Weights.Kind.ShouldBe(SpecWeightsKind.File));
        SweepSpec.Load(Path.Combine(ExamplesFolder(), "vgg19-block4-pool.yaml")).SingleTrial().Cutoff.ShouldBe("block4_pool");
        SweepSpec.Load(Path.Combine(ExamplesFolder(), "feature-extractor-logistic.yaml")).SingleTrial().ShouldSatisfyAllConditions(
            t => t.Strategy.ShouldBe("feature-extractor"),
            t => t.Head.ShouldBe("logistic"),
            t => t.Cutoff.ShouldBe("avgpool"));
    }

    /// <summary>examples/ beside Cluster.sln, found from the test's output folder upwards.</summary>
    private static string ExamplesFolder()
    {
        for (DirectoryInfo? folder = new(AppContext.BaseDirectory); folder is not null; folder = folder.Parent)
        {
            if (File.Exists(Path.Combine(folder.FullName, "Cluster.sln")))
            {
                return Path.Combine(folder.FullName, "examples");
            }
        }
        throw new DirectoryNotFoundException($"no Cluster.sln above {AppContext.BaseDirectory}");
    }
}
