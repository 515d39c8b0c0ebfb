"""Cross-site head evaluation: the scored site group never reaches training or calibration,
except the k clips drawn for adaptation, which are then not scored."""

from __future__ import annotations

import numpy as np
import pytest

from pam.train import head_crosssite
from pam.train.head_crosssite import ClipEmbeddings, cross_site, draw_new_site_clips, few_shot, fit_clip_head


def clip_embeddings(per_site: int = 16, windows: int = 2, dim: int = 12) -> ClipEmbeddings:
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(dim)
    sites = np.repeat(["A", "B"], per_site)
    positive = np.tile([True, False], per_site)
    e = rng.standard_normal((2 * per_site, windows, dim)) + 4.0 * positive[:, None, None] * direction
    recordings = np.array([f"{s}-{i}" for i, s in enumerate(sites)])
    return ClipEmbeddings(e.astype(np.float32), positive, sites, recordings, "m", "call")


@pytest.fixture
def seen(monkeypatch):
    """Every clip a head is fitted on (training and calibration), per call."""
    calls: list[np.ndarray] = []
    real = head_crosssite.fit_clip_head

    def spy(data, clips, *args, **kwargs):
        calls.append(np.asarray(clips))
        return real(data, clips, *args, **kwargs)

    monkeypatch.setattr(head_crosssite, "fit_clip_head", spy)
    return calls


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_cross_site_fits_on_the_training_group_only(seen, pooling):
    data = clip_embeddings()
    m = cross_site(data, ["A"], ["B"], pooling)
    (fitted,) = seen
    assert set(data.sites[fitted]) == {"A"}
    assert m["clips"] == 16 and m["positives"] == 8
    assert m["ap"] > 0.9  # separable data: the head learnt something


def test_few_shot_scores_only_the_clips_it_did_not_draw(seen):
    data = clip_embeddings()
    added = draw_new_site_clips(data, ["B"], 5, seed=3)
    assert set(data.sites[added]) == {"B"} and data.positive[added].sum() == 3
    m = few_shot(data, ["A"], ["B"], 5, "mean", "retrain", draw=3)
    (fitted,) = seen
    assert set(data.recordings[fitted]) == set(data.recordings[data.sites == "A"]) | set(data.recordings[added])
    assert m["clips"] == 16 - 5


def test_threshold_adaptation_calibrates_on_the_drawn_clips_only(seen):
    data = clip_embeddings()
    few_shot(data, ["A"], ["B"], 4, "max", "threshold", draw=1)
    (fitted,) = seen
    assert set(data.sites[fitted]) == {"A"}


def test_validation_clips_are_not_training_clips():
    data = clip_embeddings()
    f = fit_clip_head(data, data.clips_of(["A"]), "max")
    assert len(f.val_clips) and not set(f.train_clips) & set(f.val_clips)
    assert set(f.train_clips) | set(f.val_clips) == set(data.clips_of(["A"]))
