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
    private const int QueryBlock = 1024;
    private const int TrainBlock = 8192;

    private readonly Tensor _train; // [N, D] float32
    private readonly Tensor _labels; // [N] int64

    internal KnnHead(FeatureRows train, int classCount, int neighbours)
        : base(train.Columns, classCount)
    {
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

    protected override double[] Probabilities(FeatureRows rows)
    {
        var probabilities = new double[rows.Rows * ClassCount];
        using var scope = NewDisposeScope();
        Tensor queries = rows.ToTensor();
        int trainRows = (int)_train.shape[0];
        for (int q0 = 0; q0 < rows.Rows; q0 += QueryBlock)
        {
            using var block = NewDisposeScope();
            Tensor query = queries[q0..Math.Min(q0 + QueryBlock, rows.Rows)].to(ScalarType.Float64);
            Tensor queryNorms = query.square().sum(1, keepdim: true);
            Tensor? bestDistances = null;
            Tensor? bestLabels = null;
            for (int t0 = 0; t0 < trainRows; t0 += TrainBlock)
            {
                Tensor train = _train[t0..Math.Min(t0 + TrainBlock, trainRows)].to(ScalarType.Float64);
                Tensor distances = (queryNorms - 2 * query.matmul(train.t()) + train.square().sum(1).unsqueeze(0)).clamp_min(0);
                Tensor labels = _labels[t0..Math.Min(t0 + TrainBlock, trainRows)].unsqueeze(0).expand(distances.shape[0], -1);
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
