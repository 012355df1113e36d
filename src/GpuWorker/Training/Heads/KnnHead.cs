using static TorchSharp.torch;

namespace Cluster.GpuWorker.Training.Heads;

/// <summary>
/// k nearest neighbours: Euclidean distances to every training row, the k nearest vote with equal weight; the
/// probabilities are the vote shares (scikit-learn's KNeighborsClassifier with uniform weights). Distances are computed
/// in float64 over blocks of training rows (‖q‖² − 2q·x + ‖x‖² loses precision in float32 when rows are close), so
/// memory is bounded by the block, not by the training set, which is kept as given (float32).
/// </summary>
public sealed class KnnHead : FeatureHead
{
    private readonly int _queryBlock;
    private readonly int _trainBlock;

    private readonly Tensor _train; // [N, D] float32
    private readonly Tensor _labels; // [N] int64

    /// <param name="queryBlock">Query rows per distance block (tests make it small to cross block boundaries).</param>
    /// <param name="trainBlock">Training rows per distance block.</param>
    internal KnnHead(FeatureRows train, int classCount, int neighbours, int queryBlock = 1024, int trainBlock = 8192)
        : base(train.Columns, classCount)
    {
        _queryBlock = queryBlock;
        _trainBlock = trainBlock;
        if (neighbours > train.Rows)
        {
            throw new ArgumentException($"head knn: neighbours {neighbours}: there are only {train.Rows} training rows");
        }
        Neighbours = neighbours;
        _train = train.ToTensor();
        _labels = tensor(train.RequireLabels().Select(l => (long)l).ToArray());
    }

    public override HeadKind Kind => HeadKind.Knn;

    public int Neighbours { get; }

    // k-NN keeps its training rows: they are the model.
    public override IReadOnlyList<(string Name, Tensor Value)> ToCheckpointTensors() =>
        [("train", _train.clone()), ("labels", _labels.clone()), ("neighbours", tensor(new long[] { Neighbours }))];

    protected override double[] Probabilities(FeatureRows rows)
    {
        var probabilities = new double[rows.Rows * ClassCount];
        using var scope = NewDisposeScope();
        Tensor queries = rows.ToTensor();
        int trainRows = (int)_train.shape[0];
        for (int q0 = 0; q0 < rows.Rows; q0 += _queryBlock)
        {
            using var block = NewDisposeScope();
            Tensor query = queries[q0..Math.Min(q0 + _queryBlock, rows.Rows)].to(ScalarType.Float64);
            Tensor queryNorms = query.square().sum(1, keepdim: true);
            Tensor? bestDistances = null;
            Tensor? bestLabels = null;
            for (int t0 = 0; t0 < trainRows; t0 += _trainBlock)
            {
                Tensor train = _train[t0..Math.Min(t0 + _trainBlock, trainRows)].to(ScalarType.Float64);
                Tensor distances = (queryNorms - 2 * query.matmul(train.t()) + train.square().sum(1).unsqueeze(0)).clamp_min(0);
                Tensor labels = _labels[t0..Math.Min(t0 + _trainBlock, trainRows)].unsqueeze(0).expand(distances.shape[0], -1);
                if (bestDistances is not null)
                {
                    distances = cat([bestDistances, distances], 1);
                    labels = cat([bestLabels!, labels], 1);
                }
                int k = (int)Math.Min(Neighbours, distances.shape[1]);
                (Tensor values, Tensor indices) = distances.topk(k, dim: 1, largest: false, sorted: true);
                bestDistances = values;
                bestLabels = labels.gather(1, indices);
            }
            Tensor votes = zeros(bestLabels!.shape[0], ClassCount, dtype: ScalarType.Float64)
                .scatter_add_(1, bestLabels, ones_like(bestLabels, dtype: ScalarType.Float64)) / Neighbours;
            votes.data<double>().ToArray().CopyTo(probabilities, q0 * ClassCount);
        }
        return probabilities;
    }

    public override void Dispose()
    {
        _train.Dispose();
        _labels.Dispose();
        base.Dispose();
    }
}
