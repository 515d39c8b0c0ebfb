"""Seeded, stratified train/validation splits that keep each recording on one side.

Clips cut from one recording share its noise and often the same calling animal; if they
landed on both sides, validation would measure memory of that recording rather than
detection. Recordings are therefore assigned whole, stratified by their label set (and
optionally site) so small validation sets still hold both positives and negatives.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from pam.train.clips import LabelledClip


def split_by_recording(
    clips: list[LabelledClip],
    val_fraction: float = 0.2,
    seed: int = 0,
    stratify_site: bool = True,
) -> tuple[list[int], list[int]]:
    """Indices (train, val) of ``clips``; every stratum with >= 2 recordings gives at least one to val.

    A recording's stratum is its sorted set of labels over all its clips (plus its site when
    ``stratify_site``); within a stratum ``round(val_fraction * n)`` recordings go to
    validation, chosen by a generator seeded with ``seed``.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    by_rec: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(clips):
        by_rec[c.recording].append(i)
    strata: dict[tuple, list[str]] = defaultdict(list)
    for rec, idx in by_rec.items():
        labels = tuple(sorted({lab for i in idx for lab in clips[i].labels}))
        site = clips[idx[0]].site if stratify_site else None
        strata[(site, labels)].append(rec)
    rng = np.random.default_rng(seed)
    val_recs: set[str] = set()
    for key in sorted(strata, key=repr):
        recs = sorted(strata[key])
        if len(recs) < 2:
            continue
        k = min(len(recs) - 1, max(1, int(math.floor(val_fraction * len(recs) + 0.5))))
        val_recs.update(rng.permutation(recs)[:k].tolist())
    train = [i for i, c in enumerate(clips) if c.recording not in val_recs]
    val = [i for i, c in enumerate(clips) if c.recording in val_recs]
    return train, val
