"""Classification numbers from a split's labels and predicted probabilities (numpy only): the report's, and
the ServingCheck's class x source recall. TFMA computes the gate's (components/evaluation.py); the report's
per-class recall is tested to equal TFMA's on the same run (tests/pipeline/test_pipeline_e2e.py).

Intervals: Wilson score intervals for proportions (precision, recall,
specificity, accuracy), a percentile bootstrap for AUC and F1.
"""
import math
from typing import Dict, List, Sequence

import numpy as np

Z_95 = 1.959964


def wilson(successes: int, total: int) -> List[float]:
    """95 % Wilson score interval of successes / total ([nan, nan] when total is 0)."""
    if total == 0:
        return [math.nan, math.nan]
    p = successes / total
    centre = (p + Z_95 ** 2 / (2 * total)) / (1 + Z_95 ** 2 / total)
    half = Z_95 * math.sqrt(p * (1 - p) / total + Z_95 ** 2 / (4 * total ** 2)) / (1 + Z_95 ** 2 / total)
    return [centre - half, centre + half]


def confusion(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((classes, classes), dtype=int)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """One-vs-rest ROC AUC as the Mann-Whitney statistic (ties count half)."""
    positives, negatives = scores[positive], scores[~positive]
    if len(positives) == 0 or len(negatives) == 0:
        return math.nan
    greater = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    return float(greater / (len(positives) * len(negatives)))


def per_class(labels: np.ndarray, probabilities: np.ndarray, names: Sequence[str], seed: int = 0,
              resamples: int = 200) -> List[Dict[str, object]]:
    predicted = probabilities.argmax(axis=1)
    counts = confusion(labels, predicted, len(names))
    rng = np.random.default_rng(seed)
    samples = [rng.integers(0, len(labels), len(labels)) for _ in range(resamples)]
    rows = []
    for k, name in enumerate(names):
        tp, fn = counts[k, k], counts[k].sum() - counts[k, k]
        fp = counts[:, k].sum() - counts[k, k]
        tn = counts.sum() - tp - fn - fp
        f1_boot = [_f1(labels[s] == k, predicted[s] == k) for s in samples]
        auc_boot = [auc(probabilities[s, k], labels[s] == k) for s in samples]
        rows.append({
            "class": name, "support": int(tp + fn),
            "precision": _ratio(tp, tp + fp), "precision_ci": wilson(tp, tp + fp),
            "recall": _ratio(tp, tp + fn), "recall_ci": wilson(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp), "specificity_ci": wilson(tn, tn + fp),
            "f1": _f1(labels == k, predicted == k), "f1_ci": _percentiles(f1_boot),
            "auc": auc(probabilities[:, k], labels == k), "auc_ci": _percentiles(auc_boot),
        })
    return rows


def _f1(truth: np.ndarray, guess: np.ndarray) -> float:
    tp = int((truth & guess).sum())
    denominator = int(truth.sum() + guess.sum())
    return 2 * tp / denominator if denominator else math.nan


def _ratio(numerator, denominator) -> float:
    return float(numerator / denominator) if denominator else math.nan


def _percentiles(values) -> List[float]:
    finite = [v for v in values if not math.isnan(v)]
    return [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))] if finite else [math.nan] * 2


def calibration(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> Dict[str, object]:
    """Reliability of the top-class probability: per-bin confidence and accuracy, and the ECE."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    table, ece = [], 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            gap = abs(correct[inside].mean() - confidence[inside].mean())
            ece += inside.mean() * gap
            table.append({"low": float(low), "high": float(high), "count": int(inside.sum()),
                          "confidence": float(confidence[inside].mean()), "accuracy": float(correct[inside].mean())})
    return {"bins": table, "ece": float(ece)}


def source_confound(labels: np.ndarray, sources: Sequence[str]) -> Dict[str, object]:
    """How well the source dataset alone predicts the label: the accuracy of each source's majority label."""
    majority, hits = {}, 0
    for source in sorted(set(sources)):
        mine = labels[np.array(sources) == source]
        values, counts = np.unique(mine, return_counts=True)
        majority[source] = int(values[counts.argmax()])
        hits += int(counts.max())
    return {"majority_label": majority, "accuracy": hits / len(labels) if len(labels) else math.nan}


def sliced_accuracy(labels: np.ndarray, predicted: np.ndarray, keys: Sequence[str]) -> Dict[str, Dict[str, object]]:
    table = {}
    for key in sorted(set(keys)):
        inside = np.array(keys) == key
        hits = int((labels[inside] == predicted[inside]).sum())
        table[key] = {"count": int(inside.sum()), "hits": hits, "accuracy": hits / int(inside.sum()),
                      "accuracy_ci": wilson(hits, int(inside.sum()))}
    return table
