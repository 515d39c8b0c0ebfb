"""Cross-site evaluation of a few-shot head on clip embeddings, and its adaptation to a new site.

The question a head must answer before it is trusted at a new site: trained on the labelled
clips of one site group, how well does it rank and call the clips of another it never saw,
and how many labelled clips of the new site does it need to get there? This module measures
it on clips whose windows were embedded once (``ClipEmbeddings``: [clips, windows, dim]):

* a **recipe** (``HeadRecipe``) says how a head reads a clip and is calibrated: which
  windows, their pooling into one clip score (``mean`` embedding, or every window trained
  with its clip's label and scored by its ``max`` or ``mean-logit``), L2 normalisation,
  weight decay, linear or MLP, and the calibration (``holdout``: one head, threshold on 25%
  of the recordings; ``cv``: a committee of fold heads, threshold on out-of-fold scores).
  ``inside_score`` cross-validates a recipe inside the training site group only, and
  ``choose_recipe`` (``choose_pooling`` for the pooling alone) keeps the best of a list.
  A recipe may also standardise each window embedding by its own site group's unlabelled
  statistics (``site_norm``) and carry its threshold to the scored group by score quantile
  (``threshold_rule``), both from ``pam.train.site_adaptation``; and train on augmented copies
  of its training clips besides the clips (``augment``; ``pam.train.clip_augmentation``),
  while calibration and scores read the original clips only.
* ``fit_clip_head`` trains a recipe's head(s) on some clips (through
  ``pam.train.heads.train_head``'s recording split, or ``fit_head`` per fold) and
  calibrates the clip threshold.
* ``cross_site`` trains on one site group and scores every clip of the other; ``few_shot``
  adds k labelled clips of the new site and scores the rest of it.

The clips given to a head are chosen by index here, so no clip of the scored site group can
reach training or calibration except the k drawn for adaptation (tests/test_head_crosssite.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from pam.train.calibrate import calibrate
from pam.train.clip_augmentation import AUGMENTS, FIELD, ClipCopies
from pam.train.heads import Head, fit_head, train_head
from pam.train.metrics import average_precision, precision_recall_f1, recall_at_precision, roc_auc
from pam.train.site_adaptation import (SITE_NORMS, THRESHOLD_RULES, quantile_threshold, standardised,
                                       window_statistics)

POOLINGS = ("mean", "max", "mean-logit")
NORMALISATIONS = ("none", "l2")
CALIBRATIONS = ("holdout", "cv")
NEW_SITE_WEIGHTS = ("equal", "balanced")
ADAPTATIONS = ("threshold", "retrain", "retrain-site-threshold")


@dataclass(frozen=True)
class ClipEmbeddings:
    """Window embeddings of labelled clips: ``embeddings`` [clips, windows, dim]; ``positive``,
    ``sites`` and ``recordings`` one per clip. For a recipe's ``site_norm`` and quantile
    threshold: ``stat_groups``, per clip, the group whose unlabelled statistics standardise it
    (None: its site); ``stat_sample``, per clip, whether it belongs to its group's unlabelled
    sample (the windows of the statistics, the scores of the quantile rule; None: every clip).
    ``copies``: augmented copies of some clips (``pam.train.clip_augmentation``) by augmentation
    (``own``, ``own+field``), read only by training under a recipe's ``augment``."""

    embeddings: np.ndarray
    positive: np.ndarray
    sites: np.ndarray
    recordings: np.ndarray
    model_id: str
    label: str
    stat_groups: np.ndarray | None = None
    stat_sample: np.ndarray | None = None
    copies: dict[str, ClipCopies] | None = None

    def __post_init__(self) -> None:
        n = len(self.embeddings)
        if self.embeddings.ndim != 3 or not len(self.positive) == len(self.sites) == len(self.recordings) == n:
            raise ValueError(f"embeddings {self.embeddings.shape} need [clips, windows, dim] and one label, site "
                             f"and recording per clip ({len(self.positive)}, {len(self.sites)}, {len(self.recordings)})")
        for name, c in (self.copies or {}).items():
            if name not in AUGMENTS[1:] or c.embeddings.shape[1:] != self.embeddings.shape[1:] or len(c.original) and (
                    c.original.min() < 0 or c.original.max() >= n or c.background.max() >= n):
                raise ValueError(f"copies {name!r}: need a name of {', '.join(AUGMENTS[1:])}, windows and dimension "
                                 f"{self.embeddings.shape[1:]} and originals and backgrounds among the {n} clips")

    def clips_of(self, sites: list[str]) -> np.ndarray:
        return np.flatnonzero(np.isin(self.sites, sites))

    def groups(self) -> np.ndarray:
        """Per clip, the group whose statistics standardise it."""
        return np.asarray(self.sites if self.stat_groups is None else self.stat_groups).astype(str)

    def sample_of(self, clips: np.ndarray) -> np.ndarray:
        """The clips of ``clips``' groups that are in their group's unlabelled sample."""
        mine = np.isin(self.groups(), self.groups()[np.asarray(clips)])
        return np.flatnonzero(mine if self.stat_sample is None else mine & np.asarray(self.stat_sample))


@dataclass(frozen=True)
class HeadRecipe:
    """How a clip head is trained and calibrated.

    ``pooling``: ``mean`` (the head reads the mean window embedding), ``max`` or ``mean-logit``
    (the head is trained on every window with its clip's label; the clip gets the highest
    window score, or the sigmoid of the mean window logit). ``windows``: which of a clip's
    windows are used (indices; None: all). ``normalise``: ``l2`` scales each window embedding to
    unit length first. ``calibration``: ``holdout`` trains one head on 75% of the recordings and
    sets the threshold on the other 25%; ``cv`` trains ``folds`` heads, each on the other
    folds' recordings, scores clips by their mean logit, and sets the threshold on the
    out-of-fold scores of every clip. ``new_site_weight`` (retrain adaptation only): ``equal``
    weighs every clip alike, ``balanced`` gives the k new-site clips the same total weight as
    the training group's clips. ``site_norm``: ``center`` or ``zscore`` standardises every
    window (after the window choice and ``normalise``) by its own group's unlabelled
    statistics. ``threshold_rule`` (cross-site scoring only): ``calibrated`` keeps the
    calibrated threshold, ``quantile`` carries it to the scored group's clips by quantile.
    ``augment`` (``own``, ``own+field``): the heads are also trained on the first ``copies``
    augmented copies of each training clip (``ClipEmbeddings.copies``), except copies whose
    overlaid background is a clip outside the training clips; calibration and scores read the
    original clips only.
    """

    pooling: str = "mean"
    windows: tuple[int, ...] | None = None
    normalise: str = "none"
    weight_decay: float = 1e-3
    kind: str = "linear"
    calibration: str = "holdout"
    folds: int = 5
    new_site_weight: str = "equal"
    site_norm: str = "none"
    threshold_rule: str = "calibrated"
    augment: str = "none"
    copies: int = 4

    def __post_init__(self) -> None:
        for name, allowed in (("pooling", POOLINGS), ("normalise", NORMALISATIONS), ("calibration", CALIBRATIONS),
                              ("new_site_weight", NEW_SITE_WEIGHTS), ("site_norm", SITE_NORMS),
                              ("threshold_rule", THRESHOLD_RULES), ("augment", AUGMENTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}: use one of {', '.join(allowed)}")

    def describe(self) -> str:
        windows = "all" if self.windows is None else ",".join(map(str, self.windows))
        adapted = "".join(f", {name} {getattr(self, name)}" for name, default in
                          (("site_norm", "none"), ("threshold_rule", "calibrated"), ("augment", "none"))
                          if getattr(self, name) != default)
        adapted += f" x{self.copies}" if self.augment != "none" else ""
        return (f"pooling {self.pooling}, windows {windows}, normalise {self.normalise}, "
                f"weight decay {self.weight_decay:g}, {self.kind}, calibration {self.calibration}{adapted}")


def as_recipe(recipe: HeadRecipe | str) -> HeadRecipe:
    """A recipe, or a pooling name meaning the default recipe with that pooling."""
    return recipe if isinstance(recipe, HeadRecipe) else HeadRecipe(pooling=recipe)


def window_rows(data: ClipEmbeddings, clips: np.ndarray, recipe: HeadRecipe,
                embeddings: np.ndarray | None = None) -> np.ndarray:
    """[clips, windows, dim] embeddings of ``clips`` as ``recipe`` reads them; with ``site_norm``,
    each clip standardised by the statistics of its group's unlabelled sample. ``embeddings``
    (copies of ``clips``, one per entry) are read in place of the clips' own, standardised as
    the clips are."""
    clips = np.asarray(clips)
    e = _chosen_windows(data.embeddings[clips] if embeddings is None else embeddings, recipe)
    if recipe.site_norm == "none":
        return e
    groups, out = data.groups(), np.empty_like(e)
    for g in np.unique(groups[clips]):
        mine = groups[clips] == g
        stats = window_statistics(_chosen_windows(data.embeddings[data.sample_of(clips[mine][:1])], recipe))
        out[mine] = standardised(e[mine], *stats, recipe.site_norm)
    return out


def _chosen_windows(e: np.ndarray, recipe: HeadRecipe) -> np.ndarray:
    if recipe.windows is not None:
        e = e[:, list(recipe.windows)]
    if recipe.normalise == "l2":
        e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    return e


@dataclass(frozen=True)
class ClipHead:
    """Heads (one, or one per calibration fold, scored by their mean logit), the recipe, the
    clip threshold, the clips the heads were trained and calibrated on, and the calibration
    clips' scores (out-of-fold for ``cv``)."""

    heads: tuple[Head, ...]
    recipe: HeadRecipe
    threshold: float
    train_clips: np.ndarray
    val_clips: np.ndarray
    val_scores: np.ndarray | None = None

    @property
    def pooling(self) -> str:
        return self.recipe.pooling

    def scores(self, data: ClipEmbeddings, clips: np.ndarray) -> np.ndarray:
        """One score per clip in ``clips``."""
        return _sigmoid(np.mean([_clip_logits(h, data, clips, self.recipe) for h in self.heads], axis=0))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


def _clip_logits(head: Head, data: ClipEmbeddings, clips: np.ndarray, recipe: HeadRecipe) -> np.ndarray:
    e = window_rows(data, np.asarray(clips), recipe)
    if recipe.pooling == "mean":
        return head.logits(e.mean(1), data.model_id)[:, 0]
    z = head.logits(e.reshape(-1, e.shape[-1]), data.model_id)[:, 0].reshape(len(e), e.shape[1])
    return z.max(1) if recipe.pooling == "max" else z.mean(1)


def training_copies(data: ClipEmbeddings, clips: np.ndarray, recipe: HeadRecipe) -> np.ndarray:
    """Indices (in ``data.copies[recipe.augment]``) of the copies a head trained on ``clips``
    reads: the first ``recipe.copies`` of each clip of ``clips`` whose background is field audio
    or one of ``clips``; none without ``augment``."""
    if recipe.augment == "none":
        return np.zeros(0, dtype=int)
    c = (data.copies or {}).get(recipe.augment)
    if c is None:
        raise ValueError(f"recipe augment {recipe.augment!r} needs copies {recipe.augment!r} in the clip embeddings")
    if len(c.number) and recipe.copies > int(c.number.max()) + 1:
        raise ValueError(f"recipe asks for {recipe.copies} copies a clip; the embeddings hold {int(c.number.max()) + 1}")
    keep = np.isin(c.original, clips) & (c.number < recipe.copies) & ((c.background == FIELD) | np.isin(c.background, clips))
    return np.flatnonzero(keep)


def training_rows(data: ClipEmbeddings, clips: np.ndarray, recipe: HeadRecipe,
                  with_copies: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Training rows of ``clips`` (and, under the recipe's ``augment``, of their copies,
    ``training_copies``) and the clip each row comes from (a copy's: its original)."""
    e, owner = window_rows(data, clips, recipe), np.asarray(clips)
    chosen = training_copies(data, owner, recipe) if with_copies else np.zeros(0, dtype=int)
    if len(chosen):
        c = data.copies[recipe.augment]
        e = np.concatenate([e, window_rows(data, c.original[chosen], recipe, c.embeddings[chosen])])
        owner = np.r_[owner, c.original[chosen]]
    if recipe.pooling == "mean":
        return e.mean(1), owner
    return e.reshape(-1, e.shape[-1]), np.repeat(owner, e.shape[1])


def _fit_on(data: ClipEmbeddings, clips: np.ndarray, recipe: HeadRecipe, seed: int,
            clip_weight: dict[int, float] | None) -> Head:
    x, owner = training_rows(data, clips, recipe)
    y = data.positive[owner].astype(np.float32)[:, None]
    w = None if clip_weight is None else np.array([clip_weight.get(int(i), 1.0) for i in owner])
    return fit_head(x, y, [data.label], data.model_id, kind=recipe.kind, weight_decay=recipe.weight_decay,
                    seed=seed, sample_weight=w)


def fit_clip_head(data: ClipEmbeddings, clips: np.ndarray, recipe: HeadRecipe | str, seed: int = 0,
                  val_fraction: float = 0.25, target_precision: float = 0.9,
                  clip_weight: dict[int, float] | None = None) -> ClipHead:
    """A head trained on ``clips`` only, its clip threshold calibrated for ``target_precision``.

    ``holdout``: split by recording (stratified by site and label), fitted on the training
    part, calibrated on the pooled scores of the validation clips. ``cv``: one head per fold
    of recordings (stratified by site and label), calibrated on every clip's out-of-fold
    score. ``clip_weight`` weighs the named clips' rows in the loss (default 1)."""
    recipe = as_recipe(recipe)
    clips = np.asarray(clips)
    if recipe.calibration == "cv":
        parts = folds_by_recording(data, clips, recipe.folds, seed, by_site=True)
        heads, oof = [], np.zeros(len(clips))
        position = {int(c): j for j, c in enumerate(clips)}
        for f, held in enumerate(parts):
            rest = np.concatenate([p for g, p in enumerate(parts) if g != f])
            heads.append(_fit_on(data, rest, recipe, seed, clip_weight))
            oof[[position[int(i)] for i in held]] = _clip_logits(heads[-1], data, held, recipe)
        y = data.positive[clips].astype(float)[:, None]
        chosen = calibrate(y, _sigmoid(oof)[:, None], [data.label], target_precision)[data.label]
        return ClipHead(tuple(heads), recipe, chosen.threshold, clips, clips, _sigmoid(oof))
    x, owner = training_rows(data, clips, recipe, with_copies=False)
    labels = [(data.label,) if data.positive[i] else () for i in owner]
    w = None if clip_weight is None else np.array([clip_weight.get(int(i), 1.0) for i in owner])
    head, split = train_head(x, labels, [str(data.recordings[i]) for i in owner], [str(data.sites[i]) for i in owner],
                             data.model_id, classes=[data.label], kind=recipe.kind, val_fraction=val_fraction,
                             target_precision=target_precision, weight_decay=recipe.weight_decay, seed=seed,
                             sample_weight=w)
    val = np.unique(owner[np.array(split) == "val"])
    train = np.unique(owner[np.array(split) == "train"])
    if recipe.augment != "none":  # the same split; the head refitted on its training clips and their copies
        head = _fit_on(data, train, recipe, seed, clip_weight)
    fitted = ClipHead((head,), recipe, 0.5, train, val)
    y = data.positive[val].astype(float)[:, None]
    val_scores = fitted.scores(data, val)
    chosen = calibrate(y, val_scores[:, None], [data.label], target_precision)[data.label]
    return dataclasses.replace(fitted, threshold=chosen.threshold, val_scores=val_scores)


def scored(fitted: ClipHead, data: ClipEmbeddings, clips: np.ndarray, target_precision: float = 0.9) -> dict:
    """AP, ROC-AUC, best recall at ``target_precision`` and the calls at the head's threshold on ``clips``."""
    y = data.positive[clips].astype(float)
    s = fitted.scores(data, clips)
    point = precision_recall_f1(y, s, fitted.threshold)
    calls = s >= fitted.threshold
    return {"ap": average_precision(y, s), "roc_auc": roc_auc(y, s),
            "recall_at_precision": recall_at_precision(y, s, target_precision),
            "threshold": fitted.threshold, "precision": point.precision, "recall": point.recall, "f1": point.f1,
            "clips": int(len(clips)), "positives": int(y.sum()), "tp": int(np.sum(calls & (y == 1))),
            "fp": int(np.sum(calls & (y == 0))), "fn": int(np.sum(~calls & (y == 1)))}


def carried(fitted: ClipHead, data: ClipEmbeddings, clips: np.ndarray) -> ClipHead:
    """``fitted`` with its threshold as its recipe's ``threshold_rule`` carries it to ``clips``'
    group: unchanged (``calibrated``), or the score that calls the same fraction of the group's
    unlabelled sample as the calibrated threshold calls of the calibration clips (``quantile``)."""
    if fitted.recipe.threshold_rule == "calibrated":
        return fitted
    target = fitted.scores(data, data.sample_of(clips))
    return dataclasses.replace(fitted, threshold=quantile_threshold(fitted.threshold, fitted.val_scores, target))


def folds_by_recording(data: ClipEmbeddings, clips: np.ndarray, folds: int, seed: int,
                       by_site: bool = False) -> list[np.ndarray]:
    """``folds`` disjoint parts of ``clips``, whole recordings, stratified by label (and by site)."""
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    strata = sorted({str(data.sites[i]) for i in clips}) if by_site else [None]
    for site in strata:
        for positive in (True, False):
            recs = sorted({str(data.recordings[i]) for i in clips if bool(data.positive[i]) == positive
                           and (site is None or str(data.sites[i]) == site)})
            for j, rec in enumerate(rng.permutation(recs)):
                fold_of.setdefault(str(rec), j % folds)
    return [np.array([i for i in clips if fold_of[str(data.recordings[i])] == f]) for f in range(folds)]


def inside_score(data: ClipEmbeddings, train_sites: list[str], recipe: HeadRecipe | str, folds: int = 5,
                 seeds: tuple[int, ...] = (0, 1), target_precision: float = 0.9) -> dict[str, float]:
    """``recipe`` cross-validated inside ``train_sites`` (``folds`` folds by recording, one fold
    draw per seed; only clips of ``train_sites`` are read): ``rank``, the mean over held-out
    folds of (AP + recall at ``target_precision``) / 2; and ``precision``, ``recall`` and ``f1``
    of the calls each fold's head makes at its own calibrated threshold (carried to the fold by
    the recipe's ``threshold_rule``), pooled over the folds of a draw, then averaged over draws.
    Each held-out fold is its own statistics group, as a new site would be: with ``site_norm``
    it is standardised by its own windows' statistics, the other folds by theirs."""
    clips = data.clips_of(train_sites)
    rank, calls = [], []
    for seed in seeds:
        tp = fp = fn = 0
        for f, held in enumerate(parts := folds_by_recording(data, clips, folds, seed)):
            rest = np.concatenate([p for g, p in enumerate(parts) if g != f])
            groups = data.groups().astype(object)
            groups[held] = "held-out fold"
            fold_data = dataclasses.replace(data, stat_groups=groups)
            fitted = carried(fit_clip_head(fold_data, rest, recipe, seed=seed), fold_data, held)
            m = scored(fitted, fold_data, held, target_precision)
            rank.append((m["ap"] + m["recall_at_precision"]) / 2)
            tp, fp, fn = tp + m["tp"], fp + m["fp"], fn + m["fn"]
        p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        calls.append((p, r, 2 * p * r / (p + r) if p + r else 0.0))
    p, r, f1 = np.mean(calls, axis=0)
    return {"rank": float(np.mean(rank)), "precision": float(p), "recall": float(r), "f1": float(f1)}


def choose_pooling(data: ClipEmbeddings, train_sites: list[str], folds: int = 5, seeds: tuple[int, ...] = (0, 1),
                   target_precision: float = 0.9) -> tuple[str, dict[str, float]]:
    """The pooling (of the default recipe, two windows' worth: ``mean`` or ``max``) with the best
    ``rank`` score of ``inside_score``, and every pooling's score."""
    score = {p: inside_score(data, train_sites, p, folds, seeds, target_precision)["rank"] for p in ("mean", "max")}
    return max(score, key=lambda p: score[p]), score


def choose_recipe(data: ClipEmbeddings, train_sites: list[str], candidates: list[HeadRecipe], key: str = "rank",
                  folds: int = 5, seeds: tuple[int, ...] = (0, 1)) -> tuple[HeadRecipe, list[dict[str, float]]]:
    """The candidate with the best ``inside_score`` ``key`` inside ``train_sites`` (the first of
    equals), and every candidate's scores."""
    scores = [inside_score(data, train_sites, r, folds, seeds) for r in candidates]
    best = max(range(len(candidates)), key=lambda j: (round(scores[j][key], 6), -j))
    return candidates[best], scores


def cross_site(data: ClipEmbeddings, train_sites: list[str], test_sites: list[str], recipe: HeadRecipe | str,
               seed: int = 0) -> dict:
    """A head trained and calibrated on ``train_sites``, scored on every clip of ``test_sites``
    (its threshold carried there by the recipe's ``threshold_rule``)."""
    if set(train_sites) & set(test_sites):
        raise ValueError(f"site groups {train_sites} and {test_sites} overlap")
    fitted = fit_clip_head(data, data.clips_of(train_sites), recipe, seed=seed)
    test = data.clips_of(test_sites)
    return scored(carried(fitted, data, test), data, test)


def draw_new_site_clips(data: ClipEmbeddings, new_sites: list[str], k: int, seed: int) -> np.ndarray:
    """``k`` clips of ``new_sites``: ceil(k/2) positives and floor(k/2) negatives, drawn with ``seed``."""
    clips = data.clips_of(new_sites)
    rng = np.random.default_rng(seed)
    pos, neg = clips[data.positive[clips]], clips[~data.positive[clips]]
    n_pos, n_neg = (k + 1) // 2, k // 2
    if n_pos >= len(pos) or n_neg >= len(neg):
        raise ValueError(f"{k} clips would leave no positive or no negative of {new_sites} to score")
    return np.sort(np.r_[rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)])


def few_shot(data: ClipEmbeddings, train_sites: list[str], new_sites: list[str], k: int, recipe: HeadRecipe | str,
             adaptation: str, draw: int, target_precision: float = 0.9) -> dict:
    """One draw of ``k`` labelled clips of ``new_sites``, scored on the rest of ``new_sites``.

    ``threshold``: the cross-site head unchanged, its threshold recalibrated on the k clips
    (as ``pam calibrate`` does for a model). ``retrain``: the k clips join the training site
    group's clips (weighted as the recipe's ``new_site_weight`` says) and the head is trained
    and calibrated again on them (some of them, by site and label, go to the validation
    clips, or to every calibration fold, that set the threshold). ``retrain-site-threshold``
    (``cv`` calibration only): retrained so, but the threshold is set on the k clips'
    out-of-fold scores alone.
    """
    if adaptation not in ADAPTATIONS:
        raise ValueError(f"unknown adaptation {adaptation!r}: use one of {', '.join(ADAPTATIONS)}")
    recipe = as_recipe(recipe)
    if recipe.threshold_rule != "calibrated":
        raise ValueError(f"few_shot sets the threshold with labelled clips: use threshold_rule 'calibrated', "
                         f"not {recipe.threshold_rule!r}")
    if adaptation == "retrain-site-threshold" and recipe.calibration != "cv":
        raise ValueError("retrain-site-threshold needs out-of-fold scores of the new clips: use calibration 'cv'")
    added = draw_new_site_clips(data, new_sites, k, seed=draw)
    rest = np.setdiff1d(data.clips_of(new_sites), added)
    own = data.clips_of(train_sites)
    if adaptation == "threshold":
        fitted = fit_clip_head(data, own, recipe, seed=draw)
        y = data.positive[added].astype(float)[:, None]
        chosen = calibrate(y, fitted.scores(data, added)[:, None], [data.label], target_precision)[data.label]
        fitted = dataclasses.replace(fitted, threshold=chosen.threshold, val_clips=added)
    else:
        weight = None if recipe.new_site_weight == "equal" else {int(i): len(own) / len(added) for i in added}
        fitted = fit_clip_head(data, np.r_[own, added], recipe, seed=draw, clip_weight=weight)
        if adaptation == "retrain-site-threshold":
            new = np.isin(fitted.val_clips, added)
            y = data.positive[fitted.val_clips[new]].astype(float)[:, None]
            chosen = calibrate(y, fitted.val_scores[new][:, None], [data.label], target_precision)[data.label]
            fitted = dataclasses.replace(fitted, threshold=chosen.threshold)
    return scored(fitted, data, rest, target_precision)
