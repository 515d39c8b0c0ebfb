"""Per-class detection thresholds from validation scores.

A sigmoid score of 0.5 means nothing in particular for a detector trained on a few sites;
what users need is a threshold with a known precision (how many detections are real) on
held-out data. The result goes into ``ModelCard.thresholds``.

The operating point is chosen on the validation scores; the threshold is then placed, by
default, halfway between the lowest score still called and the next lower score. Both
thresholds give exactly the same calls on the validation set, but the midpoint leaves a
margin on both sides for new data instead of sitting on one validation clip's score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pam.train.metrics import best_f1_threshold, precision_recall_f1, threshold_for_precision

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class ThresholdChoice:
    """How one class's threshold was found, and what it gives on the validation clips."""

    threshold: float
    method: str  # precision | f1 | default (no positives in validation)
    target_precision: float | None
    precision: float
    recall: float
    f1: float
    positives: int
    negatives: int

    def to_dict(self) -> dict:
        return asdict(self)


def _place(scores: np.ndarray, cut: float, placement: str) -> float:
    if placement == "score":
        return float(cut)
    if placement != "midpoint":
        raise ValueError(f"unknown placement {placement!r} (midpoint | score)")
    below = scores[scores < cut]
    return float(cut if below.size == 0 else (cut + below.max()) / 2.0)


def calibrate(
    y_true: np.ndarray,
    scores: np.ndarray,
    classes: list[str],
    target_precision: float | None = 0.9,
    placement: str = "midpoint",
) -> dict[str, ThresholdChoice]:
    """Choose each class's threshold on validation data ([n_clips, n_classes] arrays).

    With ``target_precision`` the threshold is the one with the best recall among those
    reaching that precision; when no threshold reaches it, or with ``target_precision=None``,
    the best-F1 threshold is used (``method`` says which). A class without validation
    positives keeps the default 0.5.
    """
    y_true = np.asarray(y_true).reshape(len(y_true), -1)
    scores = np.asarray(scores, dtype=float).reshape(len(scores), -1)
    if y_true.shape != scores.shape or y_true.shape[1] != len(classes):
        raise ValueError(f"y_true {y_true.shape}, scores {scores.shape} and {len(classes)} classes disagree")
    out: dict[str, ThresholdChoice] = {}
    for k, c in enumerate(classes):
        y, s = y_true[:, k], scores[:, k]
        pos, neg = int(y.sum()), int(len(y) - y.sum())
        point, method = None, "default"
        if pos:
            if target_precision is not None:
                point, method = threshold_for_precision(y, s, target_precision), "precision"
            if point is None:
                point, method = best_f1_threshold(y, s), "f1"
        if point is None:
            t = DEFAULT_THRESHOLD
        else:
            t = _place(s, point.threshold, placement)
        at = precision_recall_f1(y, s, t) if pos else None
        out[c] = ThresholdChoice(
            threshold=float(min(1.0, max(0.0, t))),
            method=method,
            target_precision=target_precision if method == "precision" else None,
            precision=at.precision if at else float("nan"),
            recall=at.recall if at else float("nan"),
            f1=at.f1 if at else float("nan"),
            positives=pos,
            negatives=neg,
        )
    return out


def calibrate_thresholds(
    y_true: np.ndarray,
    scores: np.ndarray,
    classes: list[str],
    target_precision: float | None = 0.9,
    placement: str = "midpoint",
) -> dict[str, float]:
    """``{class: threshold}`` for ``ModelCard.thresholds`` (see ``calibrate`` for the rule)."""
    chosen = calibrate(y_true, scores, classes, target_precision, placement)
    return {c: v.threshold for c, v in chosen.items()}


def augmented_views(waves: list[np.ndarray], backgrounds: list[np.ndarray], views: int,
                    snr_db: tuple[float, float] = (0.0, 20.0), gain_db: tuple[float, float] = (0.0, 0.0),
                    p: float = 1.0, seed: int = 0) -> list[np.ndarray]:
    """``views`` noisy copies of every clip (clip-major order): background overlaid at a random SNR.

    A model trained with background overlay scores clean validation clips differently from
    the noisy sound it meets at a new site, and a dozen validation clips give a coarse
    threshold. Calibrating on overlaid copies (the training sites' own background material,
    the training augmentation's SNR range) shows the threshold the sound it will meet.
    """
    import torch

    from pam.train import augment

    if views <= 0:
        return []
    if not backgrounds:
        raise ValueError("calibration views need background audio")
    gen = torch.Generator().manual_seed(seed)
    banks: dict[int, torch.Tensor] = {}
    out: list[np.ndarray] = []
    for w in waves:
        n = len(w)
        if n not in banks:
            banks[n] = augment.background_bank(backgrounds, n)
        x = torch.from_numpy(np.asarray(w, dtype=np.float32))[None, :].repeat(views, 1)
        x, _ = augment.overlay_background(x, banks[n], snr_db, gen, p=p)
        if gain_db != (0.0, 0.0):
            x = augment.random_gain(x, gain_db, gen)
        out.extend(row.numpy() for row in x)
    return out
