"""Cross-site head evaluation: the scored site group never reaches training or calibration,
except the k clips drawn for adaptation, which are then not scored."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import torch

from pam.train import head_crosssite
from pam.train.clip_augmentation import FIELD, AugmentSettings, ClipCopies, augmented_waves
from pam.train.head_crosssite import (ClipEmbeddings, HeadRecipe, choose_recipe, cross_site, draw_new_site_clips, few_shot,
                                     fit_clip_head, inside_score, scored, training_copies, window_rows)
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


def calibration_sizes(monkeypatch) -> list[int]:
    """The number of clips of each calibration head_crosssite makes from now on."""
    sizes: list[int] = []
    real = head_crosssite.calibrate

    def spy(y, scores, *args, **kwargs):
        sizes.append(len(y))
        return real(y, scores, *args, **kwargs)

    monkeypatch.setattr(head_crosssite, "calibrate", spy)
    return sizes


def test_site_threshold_is_set_on_the_new_clips_out_of_fold_scores_only(monkeypatch):
    data = clip_embeddings()
    sizes = calibration_sizes(monkeypatch)
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


def with_copies(data: ClipEmbeddings, copies: int = 3, flip: bool = False) -> ClipEmbeddings:
    """``data`` with ``copies`` copies of every clip in ``own`` and ``own+field`` (absences of the
    clip's site as backgrounds; every second copy field audio in ``own+field``). ``flip``: the
    copies of calls sit where absences are, and the other way round."""
    rng = np.random.default_rng(5)
    original = np.repeat(np.arange(len(data.positive)), copies)
    number = np.tile(np.arange(copies), len(data.positive))
    direction = data.embeddings[data.positive].mean((0, 1)) - data.embeddings[~data.positive].mean((0, 1))
    e = data.embeddings[original] + 0.1 * rng.standard_normal((len(original),) + data.embeddings.shape[1:])
    if flip:
        e = e - np.where(data.positive[original], 1.0, -1.0)[:, None, None] * 2 * direction
    own = np.array([rng.choice(np.flatnonzero(~data.positive & (data.sites == data.sites[i]) & (np.arange(len(data.sites)) != i)))
                    for i in original])
    field = np.where(number % 2 == 1, FIELD, own)
    made = {name: ClipCopies(e.astype(np.float32), original, number, bg) for name, bg in (("own", own), ("own+field", field))}
    return dataclasses.replace(data, copies=made)


@pytest.mark.parametrize("augment", ["own", "own+field"])
def test_copies_never_carry_held_out_clips_into_training(monkeypatch, augment):
    data = with_copies(clip_embeddings())
    picked = []
    real = head_crosssite.training_copies

    def spy(data, clips, recipe):
        chosen = real(data, clips, recipe)
        picked.append((np.asarray(clips), chosen))
        return chosen

    monkeypatch.setattr(head_crosssite, "training_copies", spy)
    inside_score(data, ["A"], HeadRecipe(augment=augment, copies=2), folds=4, seeds=(0,))
    fit_clip_head(data, data.clips_of(["A"]), HeadRecipe(augment=augment, copies=2, calibration="cv", folds=4))
    c = data.copies[augment]
    assert picked and all(len(chosen) for _, chosen in picked)
    for clips, chosen in picked:
        assert set(c.original[chosen]) <= set(clips)  # a copy trains only with its own clip
        assert all(b == FIELD or b in clips for b in c.background[chosen])  # and never carries a held-out background
        expected = np.isin(c.original, clips) & (c.number < 2) & ((c.background == FIELD) | np.isin(c.background, clips))
        assert np.array_equal(chosen, np.flatnonzero(expected))  # every other copy of the clips is read
    held_out_background = [(clips, chosen) for clips, chosen in picked if len(clips) < 16]
    assert any((np.isin(c.original, clips) & ~np.isin(c.background, clips) & (c.background != FIELD)).any()
               for clips, _ in held_out_background)  # such copies existed and were left out
    assert training_copies(data, data.clips_of(["A"]), HeadRecipe()).size == 0


@pytest.mark.parametrize("calibration", ["holdout", "cv"])
def test_copies_train_the_head_but_calibration_and_scores_read_the_originals(monkeypatch, calibration):
    data = clip_embeddings(per_site=24)
    poisoned = with_copies(data, copies=4, flip=True)  # label-flipped copies: if read, they ruin the head
    sizes = calibration_sizes(monkeypatch)
    train = data.clips_of(["A"])
    plain = fit_clip_head(poisoned, train, HeadRecipe(calibration=calibration, folds=4))
    augmented = fit_clip_head(poisoned, train, HeadRecipe(calibration=calibration, folds=4, augment="own"))
    assert sizes == [len(plain.val_clips), len(augmented.val_clips)]  # calibrated on original clips only
    assert set(augmented.val_clips) <= set(train) and len(augmented.val_scores) == len(augmented.val_clips)
    if calibration == "holdout":
        assert np.array_equal(plain.val_clips, augmented.val_clips)  # the same split with or without copies
    else:
        assert set(augmented.val_clips) == set(train)
    test = data.clips_of(["B"])
    assert scored(plain, data, test)["ap"] > 0.9
    assert scored(augmented, data, test)["ap"] < 0.5  # the flipped copies were trained on
    with pytest.raises(ValueError, match="copies"):
        fit_clip_head(data, train, HeadRecipe(augment="own"))
    with pytest.raises(ValueError, match="hold 4"):
        fit_clip_head(poisoned, train, HeadRecipe(augment="own", copies=8))


def test_augmented_waves_keep_their_clip_and_draw_backgrounds_from_other_absences():
    rng = np.random.default_rng(0)
    waves = rng.standard_normal((6, 800)).astype(np.float32) * 0.1
    absent = np.array([False, True, False, True, True, False])
    ids = np.arange(10, 16)
    torch_field = torch.as_tensor(rng.standard_normal((3, 1000)).astype(np.float32))
    settings = AugmentSettings(copies=4, seed=3)
    x, original, number, background = augmented_waves(waves, ids, absent, 100, settings)
    assert x.shape == (24, 800) and list(original) == list(np.repeat(ids, 4)) and list(number) == [0, 1, 2, 3] * 6
    assert set(background) <= {11, 13, 14} and not (background == original).any()
    again = augmented_waves(waves, ids, absent, 100, settings)[0]
    assert np.array_equal(x, again)  # seeded
    assert not np.allclose(x[0], waves[0])  # changed
    _, _, number, background = augmented_waves(waves, ids, absent, 100, settings, field=torch_field)
    assert (background[number % 2 == 1] == FIELD).all() and (background[number % 2 == 0] != FIELD).all()
