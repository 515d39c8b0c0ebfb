"""Cross-site evaluation of a few-shot head on clip embeddings, and its adaptation to a new site.

The question a head must answer before it is trusted at a new site: trained on the labelled
clips of one site group, how well does it rank and call the clips of another it never saw,
and how many labelled clips of the new site does it need to get there? This module measures
it on clips whose windows were embedded once (``ClipEmbeddings``: [clips, windows, dim]):

* **pooling** turns a clip's window embeddings into one clip score: ``mean`` (the head reads
  the mean of the window embeddings) or ``max`` (the head is trained on every window with its
  clip's label and the clip scores the maximum over its windows, as ``pam evaluate`` scores
  clips). ``choose_pooling`` picks one by cross-validation inside the training site group only.
* ``fit_clip_head`` trains a head on some clips with ``pam.train.heads.train_head`` (its
  recording split, stratified by site and label) and calibrates the clip threshold on the
  pooled scores of its validation clips.
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
from pam.train.heads import Head, train_head
from pam.train.metrics import average_precision, precision_recall_f1, recall_at_precision, roc_auc

POOLINGS = ("mean", "max")
ADAPTATIONS = ("threshold", "retrain")


@dataclass(frozen=True)
class ClipEmbeddings:
    """Window embeddings of labelled clips: ``embeddings`` [clips, windows, dim]; ``positive``,
    ``sites`` and ``recordings`` one per clip."""

    embeddings: np.ndarray
    positive: np.ndarray
    sites: np.ndarray
    recordings: np.ndarray
    model_id: str
    label: str

    def __post_init__(self) -> None:
        n = len(self.embeddings)
        if self.embeddings.ndim != 3 or not len(self.positive) == len(self.sites) == len(self.recordings) == n:
            raise ValueError(f"embeddings {self.embeddings.shape} need [clips, windows, dim] and one label, site "
                             f"and recording per clip ({len(self.positive)}, {len(self.sites)}, {len(self.recordings)})")

    def clips_of(self, sites: list[str]) -> np.ndarray:
        return np.flatnonzero(np.isin(self.sites, sites))


@dataclass(frozen=True)
class ClipHead:
    """A head, its pooling, its clip threshold and the clips it was trained and calibrated on."""

    head: Head
    pooling: str
    threshold: float
    train_clips: np.ndarray
    val_clips: np.ndarray

    def scores(self, data: ClipEmbeddings, clips: np.ndarray) -> np.ndarray:
        """One score per clip in ``clips``."""
        e = data.embeddings[clips]
        if self.pooling == "mean":
            return self.head.scores(e.mean(1), data.model_id)[:, 0]
        per_window = self.head.scores(e.reshape(-1, e.shape[-1]), data.model_id)[:, 0]
        return per_window.reshape(len(clips), e.shape[1]).max(1)


def _rows(data: ClipEmbeddings, clips: np.ndarray, pooling: str) -> tuple[np.ndarray, np.ndarray]:
    """Training rows of ``clips`` and the clip each row comes from."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
    e = data.embeddings[clips]
    if pooling == "mean":
        return e.mean(1), np.asarray(clips)
    return e.reshape(-1, e.shape[-1]), np.repeat(clips, e.shape[1])


def fit_clip_head(data: ClipEmbeddings, clips: np.ndarray, pooling: str, seed: int = 0, val_fraction: float = 0.25,
                  target_precision: float = 0.9, kind: str = "linear") -> ClipHead:
    """A head trained on ``clips`` only: split by recording (stratified by site and label),
    fitted on the training part, its clip threshold calibrated for ``target_precision`` on the
    pooled scores of the validation clips."""
    clips = np.asarray(clips)
    x, owner = _rows(data, clips, pooling)
    labels = [(data.label,) if data.positive[i] else () for i in owner]
    head, split = train_head(x, labels, [str(data.recordings[i]) for i in owner], [str(data.sites[i]) for i in owner],
                             data.model_id, classes=[data.label], kind=kind, val_fraction=val_fraction,
                             target_precision=target_precision, seed=seed)
    val = np.unique(owner[np.array(split) == "val"])
    train = np.unique(owner[np.array(split) == "train"])
    fitted = ClipHead(head, pooling, 0.5, train, val)
    y = data.positive[val].astype(float)[:, None]
    chosen = calibrate(y, fitted.scores(data, val)[:, None], [data.label], target_precision)[data.label]
    return dataclasses.replace(fitted, threshold=chosen.threshold)


def scored(fitted: ClipHead, data: ClipEmbeddings, clips: np.ndarray, target_precision: float = 0.9) -> dict:
    """AP, ROC-AUC, best recall at ``target_precision`` and the calls at the head's threshold on ``clips``."""
    y = data.positive[clips].astype(float)
    s = fitted.scores(data, clips)
    point = precision_recall_f1(y, s, fitted.threshold)
    return {"ap": average_precision(y, s), "roc_auc": roc_auc(y, s),
            "recall_at_precision": recall_at_precision(y, s, target_precision),
            "threshold": fitted.threshold, "precision": point.precision, "recall": point.recall, "f1": point.f1,
            "clips": int(len(clips)), "positives": int(y.sum())}


def folds_by_recording(data: ClipEmbeddings, clips: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """``folds`` disjoint parts of ``clips``, whole recordings, stratified by label."""
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for positive in (True, False):
        recs = sorted({str(data.recordings[i]) for i in clips if bool(data.positive[i]) == positive})
        for j, rec in enumerate(rng.permutation(recs)):
            fold_of.setdefault(str(rec), j % folds)
    return [np.array([i for i in clips if fold_of[str(data.recordings[i])] == f]) for f in range(folds)]


def choose_pooling(data: ClipEmbeddings, train_sites: list[str], folds: int = 5, seeds: tuple[int, ...] = (0, 1),
                   target_precision: float = 0.9) -> tuple[str, dict[str, float]]:
    """The pooling with the best mean of (AP + recall at ``target_precision``) / 2 over
    ``folds``-fold cross-validation inside ``train_sites`` (one fold draw per seed), and every
    pooling's score. Only clips of ``train_sites`` are read."""
    clips = data.clips_of(train_sites)
    score = {}
    for pooling in POOLINGS:
        runs = []
        for seed in seeds:
            parts = folds_by_recording(data, clips, folds, seed)
            for f, held in enumerate(parts):
                rest = np.concatenate([p for g, p in enumerate(parts) if g != f])
                m = scored(fit_clip_head(data, rest, pooling, seed=seed), data, held, target_precision)
                runs.append((m["ap"] + m["recall_at_precision"]) / 2)
        score[pooling] = float(np.mean(runs))
    return max(POOLINGS, key=lambda p: score[p]), score


def cross_site(data: ClipEmbeddings, train_sites: list[str], test_sites: list[str], pooling: str,
               seed: int = 0) -> dict:
    """A head trained and calibrated on ``train_sites``, scored on every clip of ``test_sites``."""
    if set(train_sites) & set(test_sites):
        raise ValueError(f"site groups {train_sites} and {test_sites} overlap")
    fitted = fit_clip_head(data, data.clips_of(train_sites), pooling, seed=seed)
    return scored(fitted, data, data.clips_of(test_sites))


def draw_new_site_clips(data: ClipEmbeddings, new_sites: list[str], k: int, seed: int) -> np.ndarray:
    """``k`` clips of ``new_sites``: ceil(k/2) positives and floor(k/2) negatives, drawn with ``seed``."""
    clips = data.clips_of(new_sites)
    rng = np.random.default_rng(seed)
    pos, neg = clips[data.positive[clips]], clips[~data.positive[clips]]
    n_pos, n_neg = (k + 1) // 2, k // 2
    if n_pos >= len(pos) or n_neg >= len(neg):
        raise ValueError(f"{k} clips would leave no positive or no negative of {new_sites} to score")
    return np.sort(np.r_[rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)])


def few_shot(data: ClipEmbeddings, train_sites: list[str], new_sites: list[str], k: int, pooling: str,
             adaptation: str, draw: int, target_precision: float = 0.9) -> dict:
    """One draw of ``k`` labelled clips of ``new_sites``, scored on the rest of ``new_sites``.

    ``threshold``: the cross-site head unchanged, its threshold recalibrated on the k clips
    (as ``pam calibrate`` does for a model). ``retrain``: the k clips join the training site
    group's clips and the head is trained and calibrated again on them (the split sends some
    of them, by site and label, to the validation clips that set the threshold).
    """
    if adaptation not in ADAPTATIONS:
        raise ValueError(f"unknown adaptation {adaptation!r}: use one of {', '.join(ADAPTATIONS)}")
    added = draw_new_site_clips(data, new_sites, k, seed=draw)
    rest = np.setdiff1d(data.clips_of(new_sites), added)
    own = data.clips_of(train_sites)
    if adaptation == "threshold":
        fitted = fit_clip_head(data, own, pooling, seed=draw)
        y = data.positive[added].astype(float)[:, None]
        chosen = calibrate(y, fitted.scores(data, added)[:, None], [data.label], target_precision)[data.label]
        fitted = dataclasses.replace(fitted, threshold=chosen.threshold, val_clips=added)
    else:
        fitted = fit_clip_head(data, np.r_[own, added], pooling, seed=draw)
    return scored(fitted, data, rest, target_precision)
