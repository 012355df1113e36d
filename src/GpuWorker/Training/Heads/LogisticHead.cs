using TorchSharp;
using static TorchSharp.torch;

namespace Cluster.GpuWorker.Training.Heads;

/// <summary>
/// Softmax regression with L2 regularisation, fitted to the optimum of scikit-learn's objective
/// C·Σᵢ cross-entropyᵢ + ½‖W‖² (the bias not penalised) by L-BFGS in float64. The objective is strictly convex, so the
/// optimum is unique and the fit does not depend on a learning rate, a seed or the order of the rows: the same
/// features give the coefficients scikit-learn's LogisticRegression gives (tested against it).
/// </summary>
public sealed class LogisticHead : FeatureHead
{
    private const int MaxIterations = 2000;
    private const int History = 20;

    private readonly Tensor _weights; // [K, D] float64
    private readonly Tensor _bias; // [K] float64

    private LogisticHead(Tensor weights, Tensor bias, int iterations)
        : base((int)weights.shape[1], (int)weights.shape[0])
    {
        _weights = weights;
        _bias = bias;
        Iterations = iterations;
    }

    public override HeadKind Kind => HeadKind.Logistic;

    /// <summary>L-BFGS iterations the fit took.</summary>
    public int Iterations { get; }

    /// <summary>The coefficients, [classes × features] row-major.</summary>
    public double[] Weights => _weights.data<double>().ToArray();

    public double[] Bias => _bias.data<double>().ToArray();

    public override IReadOnlyList<(string Name, Tensor Value)> ToCheckpointTensors() => [("weight", _weights.clone()), ("bias", _bias.clone())];

    internal static LogisticHead Fit(FeatureRows train, int classCount, HeadSettings settings)
    {
        int n = train.Rows;
        int d = train.Columns;
        using var scope = NewDisposeScope();
        Tensor x = train.ToTensor(ScalarType.Float64);
        Tensor labels = tensor(train.RequireLabels().Select(l => (long)l).ToArray());
        Tensor oneHot = nn.functional.one_hot(labels, classCount).to(ScalarType.Float64);
        // The objective divided by C·N (same optimum), so its scale does not grow with the data.
        double l2 = 1.0 / (settings.InverseRegularization * n);

        (double Loss, Tensor Gradient) Evaluate(Tensor theta)
        {
            using var step = NewDisposeScope();
            Tensor w = theta[..(classCount * d)].view(classCount, d);
            Tensor b = theta[(classCount * d)..];
            Tensor logits = x.matmul(w.t()) + b;
            Tensor logProbabilities = logits.log_softmax(1);
            double loss = -(oneHot * logProbabilities).sum().item<double>() / n + 0.5 * l2 * w.square().sum().item<double>();
            Tensor g = (logProbabilities.exp() - oneHot) / n;
            Tensor gradient = cat([(g.t().matmul(x) + w * l2).flatten(), g.sum(dim: 0)]);
            return (loss, gradient.MoveToOuterDisposeScope());
        }

        Tensor theta = zeros(classCount * d + classCount, dtype: ScalarType.Float64);
        int iterations = Minimize(ref theta, Evaluate);
        using (theta)
        {
            Tensor weights = theta[..(classCount * d)].view(classCount, d).clone().MoveToOuterDisposeScope();
            Tensor bias = theta[(classCount * d)..].clone().MoveToOuterDisposeScope();
            return new LogisticHead(weights, bias, iterations);
        }
    }

    /// <summary>
    /// L-BFGS (two-loop recursion, the last <see cref="History"/> steps) with a backtracking Armijo line search, until
    /// the largest gradient component is below 1e-10 or a step no longer changes the objective. Each iteration runs in
    /// its own dispose scope; what outlives it (the point, its gradient, the kept steps) is detached and disposed by
    /// hand when replaced, so memory stays flat however many iterations it takes. Returns the iterations.
    /// </summary>
    private static int Minimize(ref Tensor theta, Func<Tensor, (double Loss, Tensor Gradient)> evaluate)
    {
        var steps = new Queue<(Tensor S, Tensor Y, double Rho)>();
        theta = theta.DetachFromDisposeScope();
        (double loss, Tensor gradient) = evaluate(theta);
        gradient.DetachFromDisposeScope();
        int iteration = 0;
        try
        {
            for (; iteration < MaxIterations; iteration++)
            {
                using var scope = NewDisposeScope();
                if (gradient.abs().max().item<double>() < 1e-10)
                {
                    break;
                }
                Tensor direction = TwoLoop(gradient, steps);
                double slope = gradient.dot(direction).item<double>();
                if (slope >= 0)
                {
                    // Not a descent direction (curvature information gone bad): start the history again.
                    DisposeAll(steps);
                    direction = -gradient;
                    slope = -gradient.dot(gradient).item<double>();
                }
                // The first step, without curvature to scale it, moves at most 1 in any coordinate.
                double stepSize = steps.Count == 0 ? Math.Min(1.0, 1.0 / direction.abs().max().item<double>()) : 1.0;
                Tensor next;
                double nextLoss;
                Tensor nextGradient;
                int halvings = 0;
                while (true)
                {
                    next = theta + direction * stepSize;
                    (nextLoss, nextGradient) = evaluate(next);
                    if (nextLoss <= loss + 1e-4 * stepSize * slope || halvings++ >= 60)
                    {
                        break;
                    }
                    stepSize *= 0.5;
                }
                Tensor s = next - theta;
                Tensor y = nextGradient - gradient;
                double sy = s.dot(y).item<double>();
                if (sy > 1e-12 * y.dot(y).item<double>())
                {
                    steps.Enqueue((s.DetachFromDisposeScope(), y.DetachFromDisposeScope(), 1.0 / sy));
                    if (steps.Count > History)
                    {
                        (Tensor oldS, Tensor oldY, _) = steps.Dequeue();
                        oldS.Dispose();
                        oldY.Dispose();
                    }
                }
                bool converged = Math.Abs(loss - nextLoss) <= 1e-16 * Math.Max(1.0, Math.Abs(loss));
                theta.Dispose();
                gradient.Dispose();
                theta = next.DetachFromDisposeScope();
                gradient = nextGradient.DetachFromDisposeScope();
                loss = nextLoss;
                if (converged)
                {
                    iteration++;
                    break;
                }
            }
            return iteration;
        }
        finally
        {
            gradient.Dispose();
            DisposeAll(steps);
        }
    }

    /// <summary>−H·g with H the L-BFGS inverse-Hessian estimate from <paramref name="steps"/> (oldest first).</summary>
    private static Tensor TwoLoop(Tensor gradient, Queue<(Tensor S, Tensor Y, double Rho)> steps)
    {
        Tensor q = gradient.clone();
        var history = steps.ToArray();
        var alphas = new double[history.Length];
        for (int i = history.Length - 1; i >= 0; i--)
        {
            alphas[i] = history[i].Rho * history[i].S.dot(q).item<double>();
            q.sub_(history[i].Y * alphas[i]);
        }
        if (history.Length > 0)
        {
            (Tensor s, Tensor y, _) = history[^1];
            q.mul_(s.dot(y).item<double>() / y.dot(y).item<double>());
        }
        for (int i = 0; i < history.Length; i++)
        {
            double beta = history[i].Rho * history[i].Y.dot(q).item<double>();
            q.add_(history[i].S * (alphas[i] - beta));
        }
        return -q;
    }

    private static void DisposeAll(Queue<(Tensor S, Tensor Y, double Rho)> steps)
    {
        while (steps.TryDequeue(out (Tensor S, Tensor Y, double Rho) step))
        {
            step.S.Dispose();
            step.Y.Dispose();
        }
    }

    protected override double[] Probabilities(FeatureRows rows)
    {
        using var scope = NewDisposeScope();
        Tensor x = rows.ToTensor(ScalarType.Float64);
        return (x.matmul(_weights.t()) + _bias).softmax(1).data<double>().ToArray();
    }

    public override void Dispose()
    {
        _weights.Dispose();
        _bias.Dispose();
        base.Dispose();
    }
}
