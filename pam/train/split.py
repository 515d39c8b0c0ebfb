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


SPLITS = ("train", "val", "test")


def split_by_site(clips: list[LabelledClip], val_fraction: float, test_fraction: float,
                  seed: int = 0) -> list[str]:
    """Whole sites to each split: ``round(fraction * sites)`` sites (at least one when > 0)."""
    sites = sorted({c.site for c in clips if c.site is not None})
    if any(c.site is None for c in clips):
        missing = sum(c.site is None for c in clips)
        raise ValueError(f"split.by is 'site' but {missing} clip(s) have no site")
    n_test = max(1, round(test_fraction * len(sites))) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * len(sites)))
    if n_test + n_val >= len(sites):
        raise ValueError(f"split.by is 'site' but there are only {len(sites)} site(s) ({sites}); "
                         f"need more than {n_test + n_val} to keep one for training")
    order = np.random.default_rng(seed).permutation(sites).tolist()
    test, val = set(order[:n_test]), set(order[n_test:n_test + n_val])
    return ["test" if c.site in test else "val" if c.site in val else "train" for c in clips]


def assign_splits(
    clips: list[LabelledClip],
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    by: str = "recording",
    stratify_site: bool = True,
    test_sites: list[str] | None = None,
) -> list[str]:
    """``'train' | 'val' | 'test'`` for every clip; one recording (or site) never spans two splits.

    ``test_sites``: those sites are the test split and nothing else is (cross-site
    evaluation); the others are split into train and validation. Otherwise, by recording:
    the test recordings are drawn first, then validation from the rest, both stratified by
    label set (and site), seeded; by site: whole sites are drawn.
    """
    if by not in ("recording", "site"):
        raise ValueError(f"unknown split unit {by!r} (recording | site)")
    if by == "site" and not test_sites:
        return split_by_site(clips, val_fraction, test_fraction, seed)
    out = ["train"] * len(clips)
    rest = list(range(len(clips)))
    if test_sites:
        known = {c.site for c in clips}
        missing = sorted(set(test_sites) - known)
        if missing:
            raise ValueError(f"split.test_sites {missing} not among the data's sites {sorted(map(str, known))}")
        rest = [i for i, c in enumerate(clips) if c.site not in set(test_sites)]
        for i, c in enumerate(clips):
            if c.site in set(test_sites):
                out[i] = "test"
        if by == "site":
            sub = split_by_site([clips[i] for i in rest], val_fraction, 0.0, seed)
            for i, s in zip(rest, sub):
                out[i] = s
            return out
    elif test_fraction > 0:
        _, test = split_by_recording(clips, test_fraction, seed=seed, stratify_site=stratify_site)
        for i in test:
            out[i] = "test"
        held = set(test)
        rest = [i for i in range(len(clips)) if i not in held]
        val_fraction = min(0.95, val_fraction / (1 - test_fraction))
    sub = [clips[i] for i in rest]
    if len({c.recording for c in sub}) < 2:
        raise ValueError("too few recordings left to split into training and validation")
    _, val = split_by_recording(sub, val_fraction, seed=seed, stratify_site=stratify_site)
    for j in val:
        out[rest[j]] = "val"
    return out
