"""Unsupervised adaptation of a head to a site group: its unlabelled clips, never their labels.

Two rules, both reading only a site group's window embeddings or the head's scores of them:

* **per-site standardisation** (``site_norm``): before the head, every window embedding is
  standardised by the statistics of its own site group's windows: ``center`` subtracts the
  group's mean window embedding, ``zscore`` also divides each dimension by the group's
  standard deviation. A head trained on one site group (standardised by its statistics) then
  reads another group standardised by that group's statistics, so a shift of the whole
  embedding cloud between sites (recorder, habitat, gain) is taken out before the head.
* **a threshold carried by quantile** (``quantile_threshold``): the threshold calibrated on
  the training group calls some fraction of the training group's calibration clips; at the
  new group the threshold is the score that calls the same fraction of its clips. It assumes
  that the two groups hold calls in about the same proportion.
"""

from __future__ import annotations

import numpy as np

SITE_NORMS = ("none", "center", "zscore")
THRESHOLD_RULES = ("calibrated", "quantile")


def window_statistics(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per dimension of ``windows`` [..., dim] (every window one
    sample); a near-constant dimension's deviation is floored as ``pam.train.heads`` floors it."""
    sample = np.asarray(windows, dtype=np.float64).reshape(-1, np.shape(windows)[-1])
    if not len(sample):
        raise ValueError("no windows to take site statistics from")
    std = sample.std(0)
    return sample.mean(0), np.maximum(std, 1e-2 * std.mean() + 1e-12)


def standardised(windows: np.ndarray, mean: np.ndarray, std: np.ndarray, site_norm: str) -> np.ndarray:
    """``windows`` [..., dim] centred on ``mean`` (``center``), also scaled by ``std`` (``zscore``),
    or as they are (``none``)."""
    if site_norm not in SITE_NORMS:
        raise ValueError(f"unknown site_norm {site_norm!r}: use one of {', '.join(SITE_NORMS)}")
    if site_norm == "none":
        return windows
    out = windows - mean
    if site_norm == "zscore":
        out = out / std
    return out.astype(np.float32)


def quantile_threshold(threshold: float, source_scores: np.ndarray, target_scores: np.ndarray) -> float:
    """The threshold that calls the same fraction of ``target_scores`` as ``threshold`` calls of
    ``source_scores`` (the nearest whole number of target clips, more where scores tie; above
    every target score if that number is 0)."""
    source, target = np.asarray(source_scores, dtype=float), np.sort(np.asarray(target_scores, dtype=float))[::-1]
    if not len(source) or not len(target):
        raise ValueError("the quantile rule needs scores of both site groups")
    calls = int(round(float(np.mean(source >= threshold)) * len(target)))
    if calls == 0:
        return float(np.nextafter(target[0], np.inf))
    return float(target[calls - 1])
