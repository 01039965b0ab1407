"""Classification and regression metrics, ROC operating points and ROC plots.

Labels are 0/1 arrays (1 = the positive class: AD, or male for the sex classifier); scores are
probabilities in [0, 1]. Every function accepts shapes (N,).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

#: Thresholds at which the model card records sensitivity and specificity.
OPERATING_THRESHOLDS = np.round(np.linspace(0.0, 1.0, 41), 3)


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, balanced accuracy, sensitivity, specificity (at ``threshold``) and ROC AUC.

    Values are fractions in [0, 1]; a value that cannot be computed (no positive or no negative
    sample) is None. ``n``, ``n_positive`` count the samples.
    """
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    predicted = scores >= threshold
    positive, negative = labels == 1, labels == 0
    sensitivity = _rate(int((predicted & positive).sum()), int(positive.sum()))
    specificity = _rate(int((~predicted & negative).sum()), int(negative.sum()))
    both = sensitivity is not None and specificity is not None
    return {
        "n": int(labels.size),
        "n_positive": int(positive.sum()),
        "accuracy": _rate(int((predicted == positive).sum()), int(labels.size)),
        "balanced_accuracy": (sensitivity + specificity) / 2 if both else None,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "auc": float(roc_auc_score(labels, scores)) if both else None,
        "threshold": float(threshold),
    }


def regression_metrics(targets: np.ndarray, predictions: np.ndarray) -> dict[str, Any]:
    """Mean absolute error (target units), Pearson r and n."""
    targets = np.asarray(targets, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    r = float(np.corrcoef(targets, predictions)[0, 1]) if targets.size > 2 and targets.std() > 0 and predictions.std() > 0 else None
    return {"n": int(targets.size), "mae": float(np.abs(targets - predictions).mean()) if targets.size else None, "r": r}


def operating_points(labels: np.ndarray, scores: np.ndarray) -> list[dict[str, float]]:
    """Sensitivity and specificity at each of ``OPERATING_THRESHOLDS`` (the model card's ROC
    points, read back by the threshold slider)."""
    points = []
    for threshold in OPERATING_THRESHOLDS:
        m = binary_metrics(labels, scores, float(threshold))
        if m["sensitivity"] is None or m["specificity"] is None:
            return []
        points.append({"threshold": float(threshold), "sensitivity": m["sensitivity"], "specificity": m["specificity"]})
    return points


def screening_threshold(points: list[dict[str, float]], sensitivity: float = 0.9) -> float | None:
    """Highest threshold whose sensitivity reaches ``sensitivity`` (None without points)."""
    eligible = [p["threshold"] for p in points if p["sensitivity"] >= sensitivity]
    return max(eligible) if eligible else None


def spearman(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Spearman rank correlation of two series with its two-sided p-value."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 3 or np.unique(x).size < 2 or np.unique(y).size < 2:
        return {"n": int(x.size), "rho": None, "p": None}
    result = stats.spearmanr(x, y)
    return {"n": int(x.size), "rho": float(result.statistic), "p": float(result.pvalue)}


def permutation_test(correct: np.ndarray, groups: np.ndarray, permutations: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Does accuracy differ between two groups (e.g. 1.5 T and 3 T)? ``correct`` is 0/1 per sample,
    ``groups`` two distinct values. Two-sided p-value from ``permutations`` label shuffles."""
    correct = np.asarray(correct, dtype=np.float64)
    values = sorted(set(groups.tolist()))
    if len(values) != 2:
        return {"groups": [str(v) for v in values], "difference": None, "p": None}
    in_first = groups == values[0]
    if in_first.all() or not in_first.any():
        return {"groups": [str(v) for v in values], "difference": None, "p": None}
    observed = correct[in_first].mean() - correct[~in_first].mean()
    rng = np.random.default_rng(seed)
    count = 0
    for _ in range(permutations):
        shuffled = rng.permutation(in_first)
        if abs(correct[shuffled].mean() - correct[~shuffled].mean()) >= abs(observed) - 1e-12:
            count += 1
    return {
        "groups": [str(v) for v in values],
        "accuracy": {str(values[0]): float(correct[in_first].mean()), str(values[1]): float(correct[~in_first].mean())},
        "difference": float(observed),
        "p": (count + 1) / (permutations + 1),
        "permutations": permutations,
    }


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str) -> Path:
    """Write a PNG of one ROC curve per entry ``name -> (labels, scores)`` with its AUC."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from BrainImageNetADLib.core.atomic import write_bytes_atomic

    figure, axes = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    for name, (labels, scores) in curves.items():
        if len(set(np.asarray(labels).tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        auc = roc_auc_score(labels, scores)
        axes.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    if axes.get_legend_handles_labels()[0]:  # no curve when every score set holds one class only
        axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return write_bytes_atomic(path, buffer.getvalue())
