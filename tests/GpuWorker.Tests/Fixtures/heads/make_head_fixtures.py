#!/usr/bin/python3
"""Reference fits of the feature-extractor heads, from scikit-learn (Debian's python3-sklearn 1.2), for
tests/GpuWorker.Tests/Training/FeatureHeadTests.cs:

    /usr/bin/python3 tests/GpuWorker.Tests/Fixtures/heads/make_head_fixtures.py tests/GpuWorker.Tests/Fixtures/heads/heads.json

A small 4-class problem that is not linearly separable (overlapping clusters, 10 features, the scales of the columns
differing as pooled CNN features do), split into train and test. For it:
- `logistic`: LogisticRegression(multinomial, newton-cg, C) fitted to convergence (gradient checked < 1e-6): its objective is strictly convex, so
  any correct optimiser of the same objective reaches the same coefficients; the test compares them and the test
  probabilities.
- `knn`: KNeighborsClassifier(k, euclidean, uniform weights) predictions for the test rows.
"""
import json
import sys

import numpy as np
import sklearn
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

out = sys.argv[1]
x, y = make_classification(n_samples=300, n_features=10, n_informative=7, n_redundant=2, n_classes=4,
                           n_clusters_per_class=2, class_sep=1.0, flip_y=0.02, random_state=20261202)
x = (x * np.linspace(0.5, 3.0, 10) + np.linspace(-1.0, 2.0, 10)).astype(np.float32)
train_x, test_x = x[:220], x[220:]
train_y, test_y = y[:220], y[220:]

c = 0.5
# newton-cg stops on the gradient alone; lbfgs also stops when the objective stops changing at float64 precision
# (scipy's ftol), measured here 2e-3 away from the optimum in gradient. The gradient is checked below.
logistic = LogisticRegression(C=c, solver="newton-cg", tol=1e-12, max_iter=100000)
logistic.fit(train_x.astype(np.float64), train_y)
onehot = np.eye(4)[train_y]
logits = train_x.astype(np.float64) @ logistic.coef_.T + logistic.intercept_
p = np.exp(logits - logits.max(1, keepdims=True))
p /= p.sum(1, keepdims=True)
gradient = max(abs(c * (p - onehot).T @ train_x.astype(np.float64) + logistic.coef_).max(), abs(c * (p - onehot).sum(0)).max())
assert gradient < 1e-6, f"the reference fit is not at the optimum: largest gradient component {gradient}"
k = 5
knn = KNeighborsClassifier(n_neighbors=k, weights="uniform", metric="euclidean", algorithm="brute")
knn.fit(train_x, train_y)

def short(values):
    """float32 inputs keep every bit in 9 significant digits; float64 results are compared to 1e-6 at best."""
    return [float(f"{v:.9g}") for v in np.asarray(values).flatten()]


fixture = {
    "made_by": f"make_head_fixtures.py, scikit-learn {sklearn.__version__}, numpy {np.__version__}",
    "classes": 4,
    "features": 10,
    "train_x": short(train_x),
    "train_y": train_y.tolist(),
    "test_x": short(test_x),
    "test_y": test_y.tolist(),
    "logistic": {
        "C": c,
        "coef": short(logistic.coef_),
        "intercept": short(logistic.intercept_),
        "test_probabilities": short(logistic.predict_proba(test_x.astype(np.float64))),
        "test_accuracy": float(logistic.score(test_x, test_y)),
    },
    "knn": {
        "k": k,
        "test_predictions": knn.predict(test_x).tolist(),
        "test_accuracy": float(knn.score(test_x, test_y)),
    },
}
with open(out, "w") as f:
    json.dump(fixture, f, separators=(",", ":"))
print(f"largest gradient component at the reference optimum: {gradient:.1e}")
print(f"{out}: logistic test accuracy {fixture['logistic']['test_accuracy']:.3f}, knn {fixture['knn']['test_accuracy']:.3f}")
