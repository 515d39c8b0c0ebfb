"""Cross-site head evaluation: the scored site group never reaches training or calibration,
except the k clips drawn for adaptation, which are then not scored."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pam.train import head_crosssite
from pam.train.head_crosssite import (ClipEmbeddings, HeadRecipe, choose_recipe, cross_site, draw_new_site_clips, few_shot,
                                     fit_clip_head, inside_score, scored, window_rows)
from pam.train.site_adaptation import quantile_threshold


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


def shifted(data: ClipEmbeddings, site: str, offset: np.ndarray, scale: np.ndarray | float = 1.0) -> ClipEmbeddings:
    """``data`` with ``site``'s window embeddings scaled per dimension and moved by ``offset``."""
    e = data.embeddings.copy()
    e[data.sites == site] = e[data.sites == site] * scale + offset
    return dataclasses.replace(data, embeddings=e.astype(np.float32))


def calls_f1(m: dict) -> float:
    return 2 * m["tp"] / max(2 * m["tp"] + m["fp"] + m["fn"], 1)


def test_centring_each_site_carries_the_threshold_across_a_site_shift():
    data = clip_embeddings(per_site=40)
    direction = data.embeddings[data.positive].mean((0, 1)) - data.embeddings[~data.positive].mean((0, 1))
    moved = shifted(data, "B", -1.5 * direction)  # site B's calls look like site A's absences
    plain = cross_site(moved, ["A"], ["B"], HeadRecipe())
    centred = cross_site(moved, ["A"], ["B"], HeadRecipe(site_norm="center"))
    assert plain["recall"] < 0.5  # the shift defeats the threshold calibrated on site A
    assert calls_f1(centred) > calls_f1(plain) + 0.3 and centred["recall"] > 0.8
    assert centred["ap"] == pytest.approx(plain["ap"], abs=1e-6)  # a linear head's ranking ignores a shift


def test_zscore_standardises_each_site_by_its_own_windows():
    data = clip_embeddings(windows=3)
    rng = np.random.default_rng(1)
    moved = shifted(data, "B", rng.standard_normal(12) * 5, scale=rng.uniform(0.2, 5.0, 12))
    recipe = HeadRecipe(site_norm="zscore", windows=(0, 2))
    for site in ("A", "B"):
        e = window_rows(moved, moved.clips_of([site]), recipe).reshape(-1, 12)
        assert np.allclose(e.mean(0), 0, atol=1e-4) and np.allclose(e.std(0), 1, atol=1e-3)
    a, b = (window_rows(moved, moved.clips_of([s]), HeadRecipe(site_norm="center")) for s in "AB")
    assert np.allclose(a.reshape(-1, 12).mean(0), 0, atol=1e-4) and np.allclose(b.reshape(-1, 12).mean(0), 0, atol=1e-4)
    # the statistics come from the group's unlabelled sample only, and standardise the whole group
    sample = np.isin(np.arange(32), moved.clips_of(["B"])[:6]) | (moved.sites == "A")
    part = dataclasses.replace(moved, stat_sample=sample)
    e = window_rows(part, part.clips_of(["B"]), HeadRecipe(site_norm="center"))
    assert np.allclose(e[:6].reshape(-1, 12).mean(0), 0, atol=1e-4) and not np.allclose(e.reshape(-1, 12).mean(0), 0, atol=1e-2)
    with pytest.raises(ValueError, match="site_norm"):
        HeadRecipe(site_norm="whiten")


def test_inside_score_standardises_each_held_out_fold_by_its_own_statistics(monkeypatch):
    data = clip_embeddings(per_site=16, windows=2)
    sizes = []
    real = head_crosssite.window_statistics

    def spy(windows):
        sizes.append(int(np.prod(np.shape(windows)[:-1])))
        return real(windows)

    monkeypatch.setattr(head_crosssite, "window_statistics", spy)
    inside_score(data, ["A"], HeadRecipe(site_norm="center"), folds=4, seeds=(0,))
    assert sizes and 16 * 2 not in sizes  # never the whole group: the held-out fold is not in the training folds' statistics
    assert 4 * 2 in sizes and 12 * 2 in sizes  # a held-out fold of 4 clips; the 12 clips of the other folds


def test_quantile_rule_calls_the_same_fraction_of_the_new_site():
    t = quantile_threshold(0.5, np.array([0.1, 0.2, 0.6, 0.7, 0.8, 0.9]), np.linspace(0.0, 0.011, 12))
    assert t == pytest.approx(np.linspace(0.0, 0.011, 12)[::-1][7])  # 4 of 6 called there: 8 of 12 here
    assert np.sum(np.linspace(0.0, 0.011, 12) >= t) == 8
    assert quantile_threshold(0.95, np.array([0.1, 0.9]), np.array([0.3, 0.4])) > 0.4  # none called there: none here
    data = clip_embeddings(per_site=40)
    moved = shifted(data, "B", -1.5 * (data.embeddings[data.positive].mean((0, 1)) - data.embeddings[~data.positive].mean((0, 1))))
    fitted = fit_clip_head(moved, moved.clips_of(["A"]), HeadRecipe())
    m = cross_site(moved, ["A"], ["B"], HeadRecipe(threshold_rule="quantile"))
    rate = np.mean(fitted.val_scores >= fitted.threshold)
    assert (m["tp"] + m["fp"]) == round(rate * 40)
    with pytest.raises(ValueError, match="threshold_rule"):
        few_shot(moved, ["A"], ["B"], 4, HeadRecipe(threshold_rule="quantile"), "retrain", draw=0)
