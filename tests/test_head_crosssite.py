"""Cross-site head evaluation: the scored site group never reaches training or calibration,
except the k clips drawn for adaptation, which are then not scored."""

from __future__ import annotations

import numpy as np
import pytest

from pam.train import head_crosssite
from pam.train.head_crosssite import (ClipEmbeddings, HeadRecipe, choose_recipe, cross_site, draw_new_site_clips, few_shot,
                                     fit_clip_head, scored, window_rows)


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


def test_cv_calibration_uses_every_clip_once_out_of_fold():
    data = clip_embeddings(windows=3)
    recipe = HeadRecipe(pooling="max", windows=(0, 2), calibration="cv", folds=4)
    f = fit_clip_head(data, data.clips_of(["A"]), recipe)
    assert len(f.heads) == 4
    assert set(f.train_clips) == set(f.val_clips) == set(data.clips_of(["A"]))
    m = scored(f, data, data.clips_of(["B"]))
    assert m["ap"] > 0.9 and m["tp"] + m["fn"] == 8 and m["tp"] + m["fp"] == int(np.sum(f.scores(data, data.clips_of(["B"])) >= f.threshold))


def test_recipe_choice_reads_only_the_training_group(seen):
    data = clip_embeddings(windows=3)
    candidates = [HeadRecipe(pooling="mean"), HeadRecipe(pooling="max", normalise="l2")]
    best, scores = choose_recipe(data, ["A"], candidates, folds=4, seeds=(0,))
    assert best in candidates and len(scores) == 2
    assert all(set(data.sites[c]) == {"A"} for c in seen) and len(seen) == 8
    j = candidates.index(best)
    assert scores[j]["rank"] == max(s["rank"] for s in scores)


def test_balanced_retrain_weighs_the_new_clips_as_much_as_the_training_group(monkeypatch):
    data = clip_embeddings()
    weights = []
    real = head_crosssite.fit_clip_head

    def spy(data, clips, *args, clip_weight=None, **kwargs):
        weights.append(clip_weight)
        return real(data, clips, *args, clip_weight=clip_weight, **kwargs)

    monkeypatch.setattr(head_crosssite, "fit_clip_head", spy)
    few_shot(data, ["A"], ["B"], 4, HeadRecipe(new_site_weight="balanced"), "retrain", draw=0)
    few_shot(data, ["A"], ["B"], 4, HeadRecipe(), "retrain", draw=0)
    balanced, equal = weights
    assert equal is None
    assert set(data.sites[list(balanced)]) == {"B"} and len(balanced) == 4
    assert sum(balanced.values()) == pytest.approx(16.0)  # the 16 training clips weigh 1 each


def test_window_choice_and_l2_normalisation():
    data = clip_embeddings(windows=3)
    e = window_rows(data, np.arange(3), HeadRecipe(windows=(0, 2), normalise="l2"))
    assert e.shape == (3, 2, 12)
    assert np.allclose(np.linalg.norm(e, axis=-1), 1.0, atol=1e-5)
    assert np.allclose(e[:, 1], data.embeddings[:3, 2] / np.linalg.norm(data.embeddings[:3, 2], axis=-1, keepdims=True))
    with pytest.raises(ValueError, match="pooling"):
        HeadRecipe(pooling="median")


def test_site_threshold_is_set_on_the_new_clips_out_of_fold_scores_only(monkeypatch):
    data = clip_embeddings()
    sizes = []
    real = head_crosssite.calibrate

    def spy(y, scores, *args, **kwargs):
        sizes.append(len(y))
        return real(y, scores, *args, **kwargs)

    monkeypatch.setattr(head_crosssite, "calibrate", spy)
    m = few_shot(data, ["A"], ["B"], 6, HeadRecipe(calibration="cv", folds=3), "retrain-site-threshold", draw=2)
    assert sizes == [16 + 6, 6]  # the committee's own calibration on all clips, then the 6 new clips alone
    assert m["clips"] == 16 - 6
    with pytest.raises(ValueError, match="calibration 'cv'"):
        few_shot(data, ["A"], ["B"], 6, HeadRecipe(), "retrain-site-threshold", draw=2)
