"""Splits: no recording (or site) on two sides, stratified, seeded, written and read back."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pam.train.clips import LabelledClip
from pam.train.split import assign_splits


def clips_of(n_recordings: int, seed: int, sites: int = 3) -> list[LabelledClip]:
    """Recordings with 1-5 clips each, a label per recording, sites in turn."""
    rng = np.random.default_rng(seed)
    out = []
    for r in range(n_recordings):
        label = ("owl",) if r % 3 == 0 else ("frog", "owl") if r % 3 == 1 else ()
        for k in range(int(rng.integers(1, 6))):
            out.append(LabelledClip(Path(f"rec{r}.wav"), 3.0 * k, 3.0 * k + 3, label, f"S{r % sites}", f"rec{r}"))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_a_recording_never_spans_two_splits(seed: int) -> None:
    clips = clips_of(40, seed)
    splits = assign_splits(clips, val_fraction=0.2, test_fraction=0.2, seed=seed)
    sides: dict[str, set[str]] = {}
    for c, s in zip(clips, splits):
        sides.setdefault(c.recording, set()).add(s)
    assert all(len(v) == 1 for v in sides.values())
    assert set(splits) == {"train", "val", "test"}
    # Stratified: every label set reaches validation and test.
    for part in ("val", "test"):
        assert {c.labels for c, s in zip(clips, splits) if s == part} == {("owl",), ("frog", "owl"), ()}


def test_fractions_count_recordings_and_the_split_is_seeded() -> None:
    clips = [LabelledClip(Path(f"r{i}.wav"), 0, 3, ("a",) if i % 2 else (), "S", f"r{i}") for i in range(40)]
    splits = assign_splits(clips, 0.25, 0.25, seed=5, stratify_site=False)
    assert Counter(splits) == {"train": 20, "val": 10, "test": 10}
    assert assign_splits(clips, 0.25, 0.25, seed=5, stratify_site=False) == splits
    assert assign_splits(clips, 0.25, 0.25, seed=6, stratify_site=False) != splits


def test_test_sites_hold_out_whole_sites() -> None:
    clips = clips_of(30, 0)
    splits = assign_splits(clips, 0.2, seed=0, test_sites=["S1"])
    assert all((s == "test") == (c.site == "S1") for c, s in zip(clips, splits))
    assert "val" in splits
    with pytest.raises(ValueError, match="S7"):
        assign_splits(clips, 0.2, test_sites=["S7"])


def test_split_by_site_keeps_sites_whole() -> None:
    clips = clips_of(40, 1, sites=6)
    splits = assign_splits(clips, 0.2, 0.2, seed=3, by="site")
    per_site: dict[str, set[str]] = {}
    for c, s in zip(clips, splits):
        per_site.setdefault(c.site, set()).add(s)
    assert all(len(v) == 1 for v in per_site.values())
    assert Counter(next(iter(v)) for v in per_site.values()) == {"train": 4, "val": 1, "test": 1}
    with pytest.raises(ValueError, match="only 2 site"):
        assign_splits(clips_of(10, 0, sites=2), 0.2, 0.2, by="site")
