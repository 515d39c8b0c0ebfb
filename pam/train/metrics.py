"""Detection metrics in plain numpy (no scikit-learn dependency).

Definitions follow scikit-learn so numbers are comparable with published ones:

* average precision: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds,
  highest first (no interpolation), as ``sklearn.metrics.average_precision_score``;
* ROC-AUC: area under the ROC curve with tied scores forming one diagonal step, which is
  the Mann-Whitney statistic with ties counted one half (``roc_auc_score``);
* a clip is called positive when ``score >= threshold``.

Metrics that are undefined (no positives, or no negatives for ROC-AUC) are NaN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def _check(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(float).ravel()
    s = np.asarray(y_score, dtype=float).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values but y_score has {s.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must hold only 0 and 1")
    if not np.isfinite(s).all():
        raise ValueError("y_score must be finite")
    return y.astype(bool), s


def precision_recall_curve(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds), one entry per distinct score, highest threshold first.

    Entry k is the operating point ``score >= thresholds[k]``.
    """
    y, s = _check(y_true, y_score)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.cumsum(y)[last_of_group].astype(float)
    fp = (last_of_group + 1) - tp
    positives = y.sum()
    precision = tp / (tp + fp)
    recall = tp / positives if positives else np.full_like(tp, np.nan)
    return precision, recall, s[last_of_group]


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the precision-recall step curve, sklearn's definition; NaN without positives."""
    y, _ = _check(y_true, y_score)
    if not y.any():
        return float("nan")
    precision, recall, _ = precision_recall_curve(y_true, y_score)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count 1/2)."""
    y, s = _check(y_true, y_score)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mid-ranks give tied scores the average of the ranks they span.
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=float)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s) != 0) + 1]
    ends = np.r_[starts[1:], s.size]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0  # mean of 1-based ranks a+1..b
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


@dataclass(frozen=True)
class OperatingPoint:
    """Counts and rates of ``score >= threshold``."""

    threshold: float
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int

    def to_dict(self) -> dict:
        return asdict(self)


def precision_recall_f1(y_true: np.ndarray, y_score: np.ndarray, threshold: float) -> OperatingPoint:
    """P/R/F1 of calling ``score >= threshold`` positive (precision 0 when nothing is called)."""
    y, s = _check(y_true, y_score)
    called = s >= threshold
    tp = int((called & y).sum())
    fp = int((called & ~y).sum())
    fn = int((~called & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    return OperatingPoint(float(threshold), precision, recall, f1, tp, fp, fn)


def threshold_for_precision(y_true: np.ndarray, y_score: np.ndarray, target: float) -> OperatingPoint | None:
    """The operating point with precision >= ``target`` and the best recall; None if unreachable.

    Among points with equal recall the highest threshold is taken (fewest false alarms).
    The threshold returned is a score value of the data (the lowest score still called).
    """
    y, s = _check(y_true, y_score)
    if not y.any():
        return None
    precision, recall, thresholds = precision_recall_curve(y, s)
    ok = np.flatnonzero(precision >= target - 1e-12)
    if ok.size == 0:
        return None
    best = ok[np.argmax(recall[ok])]  # argmax takes the first, i.e. the highest threshold
    return precision_recall_f1(y, s, thresholds[best])


def recall_at_precision(y_true: np.ndarray, y_score: np.ndarray, target: float) -> float:
    """Best recall at precision >= ``target`` over all thresholds (0 if never reached)."""
    y, _ = _check(y_true, y_score)
    if not y.any():
        return float("nan")
    point = threshold_for_precision(y_true, y_score, target)
    return 0.0 if point is None else point.recall


def best_f1_threshold(y_true: np.ndarray, y_score: np.ndarray) -> OperatingPoint | None:
    """The operating point with the highest F1 (highest threshold among ties); None without positives."""
    y, s = _check(y_true, y_score)
    if not y.any():
        return None
    precision, recall, thresholds = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return precision_recall_f1(y, s, thresholds[int(np.argmax(f1))])


def class_report(
    y_true: np.ndarray,
    y_score: np.ndarray,
    classes: list[str],
    thresholds: dict[str, float] | None = None,
    target_precision: float = 0.9,
) -> dict[str, dict]:
    """Per-class AP, ROC-AUC, recall at ``target_precision`` and P/R/F1 at the given thresholds.

    ``y_true`` and ``y_score`` are [n_clips, n_classes]; a class missing from ``thresholds``
    is reported at 0.5, the model card's default.
    """
    y_true = np.asarray(y_true).reshape(len(y_true), -1)
    y_score = np.asarray(y_score).reshape(len(y_score), -1)
    out: dict[str, dict] = {}
    for k, c in enumerate(classes):
        t = (thresholds or {}).get(c, 0.5)
        point = precision_recall_f1(y_true[:, k], y_score[:, k], t)
        out[c] = {
            "ap": average_precision(y_true[:, k], y_score[:, k]),
            "roc_auc": roc_auc(y_true[:, k], y_score[:, k]),
            f"recall_at_p{target_precision:g}": recall_at_precision(y_true[:, k], y_score[:, k], target_precision),
            "threshold": float(t),
            "precision": point.precision,
            "recall": point.recall,
            "f1": point.f1,
            "positives": int(y_true[:, k].sum()),
            "negatives": int((1 - y_true[:, k]).sum()),
        }
    return out
