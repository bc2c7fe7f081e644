"""Scores of a set of predictions: the figures every report in the pipeline prints."""

from __future__ import annotations

import numpy as np

from train.labels import EMOTIONS, NUM_CLASSES


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=int)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy, unweighted accuracy (mean per-class recall), macro-F1, per-class recall, confusion."""
    cm = confusion_matrix(y_true, y_pred)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm).astype(float)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    return {
        "clips": int(cm.sum()),
        "accuracy": float(tp.sum() / max(1, cm.sum())),
        "unweighted_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_recall": {e: float(r) for e, r in zip(EMOTIONS, recall, strict=True)},
        "confusion": cm.tolist(),
    }


def mean_std(per_fold: list[dict], keys: tuple[str, ...] = ("accuracy", "unweighted_accuracy", "macro_f1")) -> dict:
    """Mean and standard deviation over folds of the headline scores."""
    out = {}
    for key in keys:
        values = np.array([f[key] for f in per_fold], dtype=float)
        out[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return out
