"""GLUE metrics on numpy arrays: accuracy, binary F1, Matthews correlation, Pearson and Spearman.

Each function takes ``predictions`` and ``references`` of shape (N,) and returns a float; they match
scikit-learn's ``accuracy_score`` / ``f1_score`` / ``matthews_corrcoef`` and scipy's ``pearsonr`` / ``spearmanr``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def accuracy(predictions: np.ndarray, references: np.ndarray) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(references)))


def binary_f1(predictions: np.ndarray, references: np.ndarray, positive: int = 1) -> float:
    """F1 of the positive class (MRPC "equivalent", QQP "duplicate"); 0 when nothing is predicted or true."""
    p, r = np.asarray(predictions) == positive, np.asarray(references) == positive
    tp = float(np.sum(p & r))
    denom = float(np.sum(p) + np.sum(r))
    return 2.0 * tp / denom if denom else 0.0


def matthews_corrcoef(predictions: np.ndarray, references: np.ndarray) -> float:
    """Multiclass MCC from the confusion matrix (Gorodkin's R_K); 0 when either side is constant."""
    p, r = np.asarray(predictions), np.asarray(references)
    classes = np.union1d(p, r)
    conf = np.zeros((len(classes), len(classes)), dtype=np.float64)  # (true, predicted)
    np.add.at(conf, (np.searchsorted(classes, r), np.searchsorted(classes, p)), 1.0)
    n = conf.sum()
    correct = np.trace(conf)
    t, q = conf.sum(axis=1), conf.sum(axis=0)  # true and predicted counts per class
    cov_tp = correct * n - t @ q
    denom = np.sqrt((n * n - q @ q) * (n * n - t @ t))
    return float(cov_tp / denom) if denom else 0.0


def pearson(predictions: np.ndarray, references: np.ndarray) -> float:
    p, r = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
    if p.std() == 0 or r.std() == 0:
        return 0.0  # a constant prediction carries no correlation (scipy would warn and return nan)
    return float(stats.pearsonr(p, r)[0])


def spearman(predictions: np.ndarray, references: np.ndarray) -> float:
    p, r = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
    if p.std() == 0 or r.std() == 0:
        return 0.0
    return float(stats.spearmanr(p, r)[0])
