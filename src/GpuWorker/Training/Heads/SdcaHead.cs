using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Trainers;

namespace Cluster.GpuWorker.Training.Heads;

/// <summary>
/// ML.NET's SDCA maximum-entropy trainer (stochastic dual coordinate ascent on a multinomial logistic model): the
/// reference material's "other machine-learning algorithm" on the network's features, from a library its users know.
/// One thread and the head's seed, so the same features give the same head (ML.NET's SDCA is not deterministic on
/// several threads).
/// </summary>
public sealed class SdcaHead : FeatureHead
{
    private readonly MLContext _ml;
    private readonly ITransformer _model;
    private readonly SchemaDefinition _schema;

    private SdcaHead(MLContext ml, ITransformer model, SchemaDefinition schema, int featureCount, int classCount)
        : base(featureCount, classCount)
    {
        _ml = ml;
        _model = model;
        _schema = schema;
    }

    public override HeadKind Kind => HeadKind.Sdca;

    /// <summary>ML.NET's own model file (a zip), as bytes.</summary>
    public override IReadOnlyList<(string Name, TorchSharp.torch.Tensor Value)> ToCheckpointTensors()
    {
        using var buffer = new MemoryStream();
        _ml.Model.Save(_model, null, buffer);
        return [("mlnet_model", TorchSharp.torch.tensor(buffer.ToArray()))];
    }

    internal static SdcaHead Fit(FeatureRows train, int classCount, HeadSettings settings)
    {
        var ml = new MLContext(seed: unchecked((int)settings.Seed));
        SchemaDefinition schema = SchemaFor(train.Columns, classCount);
        IDataView data = ml.Data.LoadFromEnumerable(Rows(train), schema);
        var options = new SdcaMaximumEntropyMulticlassTrainer.Options
        {
            LabelColumnName = nameof(Row.Label),
            FeatureColumnName = nameof(Row.Features),
            NumberOfThreads = 1,
            MaximumNumberOfIterations = settings.Epochs,
            L2Regularization = (float)(1.0 / (settings.InverseRegularization * train.Rows)),
            Shuffle = true,
        };
        ITransformer model = ml.MulticlassClassification.Trainers.SdcaMaximumEntropy(options).Fit(data);
        return new SdcaHead(ml, model, schema, train.Columns, classCount);
    }

    protected override double[] Probabilities(FeatureRows rows)
    {
        IDataView scored = _model.Transform(_ml.Data.LoadFromEnumerable(Rows(rows), _schema));
        var probabilities = new double[rows.Rows * ClassCount];
        int r = 0;
        // "Score" holds one probability per class, slot c for class c.
        foreach (float[] score in scored.GetColumn<float[]>("Score"))
        {
            for (int c = 0; c < ClassCount; c++)
            {
                probabilities[r * ClassCount + c] = score[c];
            }
            r++;
        }
        return probabilities;
    }

    /// <summary>A vector of the features' length and a key label over all the classes (known before the data is seen).</summary>
    private static SchemaDefinition SchemaFor(int featureCount, int classCount)
    {
        SchemaDefinition schema = SchemaDefinition.Create(typeof(Row));
        schema[nameof(Row.Features)].ColumnType = new VectorDataViewType(NumberDataViewType.Single, featureCount);
        schema[nameof(Row.Label)].ColumnType = new KeyDataViewType(typeof(uint), classCount);
        return schema;
    }

    private static IEnumerable<Row> Rows(FeatureRows rows)
    {
        int[]? labels = rows.Labels;
        for (int r = 0; r < rows.Rows; r++)
        {
            // A key column loaded from an enumerable takes the 0-based class index (ML.NET adds the 1 of its key
            // representation itself: measured, class c lands in score slot c). Rows to score carry no label.
            yield return new Row
            {
                Features = rows.Values.AsSpan(r * rows.Columns, rows.Columns).ToArray(),
                Label = labels is null ? 0 : (uint)labels[r],
            };
        }
    }

    private sealed class Row
    {
        public float[] Features { get; set; } = [];

        public uint Label { get; set; }
    }
}
