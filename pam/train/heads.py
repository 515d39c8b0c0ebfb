"""Few-shot heads: small classifiers trained on stored embeddings instead of audio.

A head is a linear (logistic) layer, or a small MLP, per class on top of a broad model's
embeddings (BirdNET's 1024-d vectors, or the pooled features of pam's own CNNs). It trains in
seconds on a few hundred labelled clips and scores millions of stored windows a second, so a
new species, call type or site needs no second pass over the audio.

Training reuses pam's pipeline pieces: ``pam.train.split.assign_splits`` keeps every recording
(or site) on one side, ``pam.train.calibrate.calibrate`` picks each class's threshold for a
target precision on the validation windows. Inputs are z-scored for training and the scaling is
folded into the first layer afterwards, so applying a head is one affine map (plus, for an MLP,
a ReLU and a second one).

A head is saved as one ``.npz`` file (no pickle): its weight arrays and its card as JSON
(``HeadCard``: the embedding model it reads, classes, thresholds, a fingerprint of the
training data, metrics). Its id is a hash of the weights and the card.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import numpy as np

from pam.train.calibrate import calibrate
from pam.train.clips import LabelledClip, label_matrix
from pam.train.metrics import average_precision, precision_recall_f1
from pam.train.split import assign_splits

FORMAT_VERSION = 1
KINDS = ("linear", "mlp")


class HeadError(ValueError):
    """A head that cannot be trained, loaded or applied; the message names the fix."""


class HeadModelMismatch(HeadError):
    """Embeddings from another model than the one the head was trained on."""


@dataclass(frozen=True)
class HeadCard:
    embedding_model_id: str
    embedding_dim: int
    classes: tuple[str, ...]
    thresholds: dict[str, float]
    kind: str = "linear"
    hidden: int = 0
    training_fingerprint: str = ""
    metrics: dict = field(default_factory=dict)
    version: int = FORMAT_VERSION

    def to_json(self) -> str:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return json.dumps(d, sort_keys=True, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> "HeadCard":
        d = json.loads(text)
        d["classes"] = tuple(d["classes"])
        return cls(**d)


@dataclass(frozen=True)
class Head:
    """Weights (``w1``, ``b1`` and for an MLP ``w2``, ``b2``; float32) and the card."""

    card: HeadCard
    weights: dict[str, np.ndarray]

    @property
    def head_id(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.weights):
            w = np.ascontiguousarray(self.weights[name], dtype=np.float32)
            h.update(f"{name}{w.shape}".encode())
            h.update(w.tobytes())
        h.update(self.card.to_json().encode())
        return h.hexdigest()[:16]

    def __getstate__(self) -> dict:  # pickle and copy without the packed weights (numkong's own type)
        return {k: v for k, v in self.__dict__.items() if k != "_packed_w1"}

    @cached_property
    def _packed_w1(self):
        """w1 packed for numkong's float16 kernel, once per head (not once per call: apply-head
        scores page by page)."""
        import numkong

        return numkong.dots_pack(np.ascontiguousarray(self.weights["w1"].T, dtype=np.float16))

    def check_model(self, model_id: str) -> None:
        if model_id != self.card.embedding_model_id:
            raise HeadModelMismatch(
                f"head {self.head_id} reads embeddings of model {self.card.embedding_model_id}, but these are "
                f"from model {model_id}: apply it to {self.card.embedding_model_id}'s embeddings, "
                f"or train a head on {model_id}'s")

    def logits(self, embeddings: np.ndarray, model_id: str, threads: int | None = None) -> np.ndarray:
        """[n, classes] float32 logits of ``embeddings`` (float16 or float32 rows) of ``model_id``.

        The first layer runs in numkong's mixed-precision kernels: float16 rows are multiplied
        as they are stored, accumulated in float32, with no float32 copy of the embeddings;
        rows are split over ``threads`` (default: every core).
        """
        self.check_model(model_id)
        x = np.asarray(embeddings)
        if x.ndim != 2 or x.shape[1] != self.card.embedding_dim:
            raise HeadError(f"embeddings of shape {x.shape}; head {self.head_id} reads "
                            f"{self.card.embedding_dim}-d vectors of model {model_id}")
        if x.dtype not in (np.float16, np.float32):
            x = x.astype(np.float32)
        if not rows_in_place(x):
            x = np.ascontiguousarray(x)
        z = first_layer(x, self.weights["w1"], threads or os.cpu_count() or 1,
                        self._packed_w1 if x.dtype == np.float16 else None)
        z += self.weights["b1"]
        if "w2" in self.weights:
            np.maximum(z, 0.0, out=z)
            z = z @ self.weights["w2"].astype(np.float32) + self.weights["b2"]
        return z

    def scores(self, embeddings: np.ndarray, model_id: str, threads: int | None = None) -> np.ndarray:
        """[n, classes] float32 probabilities (sigmoid of the logits)."""
        z = self.logits(embeddings, model_id, threads)
        with np.errstate(over="ignore"):
            np.exp(np.negative(z, out=z), out=z)
        z += 1.0
        return np.reciprocal(z, out=z)

    def calls(self, embeddings: np.ndarray, model_id: str) -> np.ndarray:
        """[n, classes] bool: score at or above the class's calibrated threshold."""
        thresholds = np.array([self.card.thresholds[c] for c in self.card.classes], dtype=np.float32)
        return self.scores(embeddings, model_id) >= thresholds

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        if path.suffix != ".npz":
            raise HeadError(f"{path}: a head file ends in .npz")
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, card=np.array(self.card.to_json()),
                 **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.weights.items()})
        os.replace(tmp, path)
        return path


def rows_in_place(x: np.ndarray) -> bool:
    """Whether the kernels read ``x`` [n, d] as it is: each row contiguous, rows at a positive
    stride (the rows of a Parquet page, between their length prefixes), no copy; float32 rows
    aligned (BLAS), float16 rows at any address (numkong reads them through their pointer)."""
    return bool((x.dtype == np.float16 or x.flags.aligned) and (x.shape[1] <= 1 or x.strides[1] == x.itemsize)
                and (x.shape[0] <= 1 or x.strides[0] >= x.shape[1] * x.itemsize))


def first_layer(x: np.ndarray, w1: np.ndarray, threads: int, packed=None) -> np.ndarray:
    """``x @ w1`` in float32. Float16 rows go through numkong's mixed-precision kernel (no float32
    copy of the embeddings; float32 accumulation), split in row ranges over ``threads`` threads;
    float32 rows through BLAS. ``packed``: w1 already packed for numkong (``numkong.dots_pack``
    of w1.T in float16)."""
    if x.dtype == np.float32:
        return x @ w1.astype(np.float32)
    import numkong

    if packed is None:
        packed = numkong.dots_pack(np.ascontiguousarray(w1.T, dtype=np.float16))
    n = len(x)
    if not x.flags.aligned and n:  # numkong refuses numpy's format string for these ('=e'), not the address
        x = numkong.from_pointer(x.ctypes.data, x.shape, "float16", strides=x.strides, owner=x)
    if threads <= 1 or n < 2 * 16384:
        return np.asarray(numkong.dots_packed(x, packed))
    out = numkong.empty((n, w1.shape[1]), dtype="float32")
    bounds = np.linspace(0, n, min(threads, max(1, n // 16384)) + 1).astype(int)
    ranges = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    with ThreadPoolExecutor(len(ranges)) as pool:
        list(pool.map(lambda r: numkong.dots_packed(x, packed, out=out, start_row=r[0], end_row=r[1]), ranges))
    return np.asarray(out)


def load_head(path: str | os.PathLike) -> Head:
    path = Path(path)
    if not path.is_file():
        raise HeadError(f"{path}: no such head file; train one with pam.train.heads.train_head")
    try:
        with np.load(path, allow_pickle=False) as f:
            card = HeadCard.from_json(str(f["card"]))
            weights = {k: f[k] for k in f.files if k != "card"}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HeadError(f"{path}: not a pam head file ({type(e).__name__}: {e})") from None
    if card.version != FORMAT_VERSION:
        raise HeadError(f"{path}: head format {card.version}, this pam reads {FORMAT_VERSION}: retrain the head")
    return Head(card, weights)


# ---------------------------------------------------------------------------- training


def training_fingerprint(embeddings: np.ndarray, labels: Sequence[Sequence[str]], recordings: Sequence[str],
                         sites: Sequence[str | None]) -> str:
    h = hashlib.sha256(np.ascontiguousarray(embeddings).tobytes())
    h.update(json.dumps([[sorted(map(str, lab)) for lab in labels], list(map(str, recordings)),
                         [None if s is None else str(s) for s in sites]]).encode())
    return h.hexdigest()[:16]


def _fit(x: np.ndarray, y: np.ndarray, kind: str, hidden: int, weight_decay: float, steps: int,
         seed: int, sample_weight: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Full-batch Adam on z-scored inputs, class-balanced logistic loss (rows weighted by
    ``sample_weight``, scaled to mean 1); scaling folded into w1, b1."""
    import torch

    mean = x.mean(0)
    std = x.std(0)
    std = np.maximum(std, 1e-2 * std.mean() + 1e-12)  # near-constant features must not blow up w1
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y)
    pos = yt.sum(0)
    pos_weight = ((len(yt) - pos) / pos.clamp(min=1)).clamp(max=100.0)
    d, c = x.shape[1], y.shape[1]
    if kind == "linear":
        layers = [torch.nn.Linear(d, c)]
    else:
        layers = [torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, c)]
    net = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for p in net.parameters():  # seeded initialisation, independent of torch's global generator
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[1]))
            else:
                p.zero_()
    opt = torch.optim.Adam(net.parameters(), lr=0.01, weight_decay=weight_decay)
    row_weight = None
    if sample_weight is not None:
        w = torch.from_numpy(np.asarray(sample_weight, dtype=np.float32))
        row_weight = (w / w.mean())[:, None].expand_as(yt)
    loss_fn = torch.nn.BCEWithLogitsLoss(weight=row_weight, pos_weight=pos_weight)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(net(xt), yt).backward()
        opt.step()
    first = net[0]
    # w1 is kept float16-exact: stored float16 embeddings are multiplied by it as float16 (first_layer)
    w1 = (first.weight.detach().numpy().T / std[:, None]).astype(np.float16).astype(np.float32)
    b1 = (first.bias.detach().numpy() - mean @ w1).astype(np.float32)
    if not np.isfinite(w1).all():
        raise HeadError("the head's weights overflow float16: scale the embeddings to a sensible range")
    out = {"w1": w1, "b1": b1}
    if kind == "mlp":
        out |= {"w2": net[2].weight.detach().numpy().T.copy(), "b2": net[2].bias.detach().numpy().copy()}
    return out


def fit_head(x: np.ndarray, y: np.ndarray, classes: Sequence[str], embedding_model_id: str, kind: str = "linear",
             hidden: int = 64, weight_decay: float = 1e-3, steps: int = 300, seed: int = 0,
             sample_weight: np.ndarray | None = None) -> Head:
    """A head fitted on all of (x, y) ([n, dim] embeddings, [n, classes] 0/1), thresholds not yet
    calibrated (0.5); ``train_head`` splits, fits with this and calibrates."""
    if kind not in KINDS:
        raise HeadError(f"unknown head kind {kind!r}: use one of {', '.join(KINDS)}")
    if sample_weight is not None and (len(sample_weight) != len(x) or not np.all(np.asarray(sample_weight) >= 0)
                                      or not np.sum(sample_weight) > 0):
        raise HeadError(f"{len(sample_weight)} sample weights for {len(x)} rows: give one non-negative weight per row")
    x = np.asarray(x, dtype=np.float32)
    weights = _fit(x, np.asarray(y, dtype=np.float32), kind, hidden, weight_decay, steps, seed, sample_weight)
    return Head(HeadCard(embedding_model_id, int(x.shape[1]), tuple(classes), {c: 0.5 for c in classes},
                         kind, hidden if kind == "mlp" else 0), weights)


def split_metrics(head: Head, x: np.ndarray, y: np.ndarray, model_id: str, thresholds: dict[str, float]) -> dict:
    """Per class: AP, and precision/recall at the threshold, of ``head`` on (x, y)."""
    if not len(x):
        return {}
    s = head.scores(x, model_id)
    out = {}
    for k, c in enumerate(head.card.classes):
        point = precision_recall_f1(y[:, k], s[:, k], thresholds[c])
        out[c] = {"ap": average_precision(y[:, k], s[:, k]), "precision": point.precision,
                  "recall": point.recall, "positives": int(y[:, k].sum()), "windows": int(len(y))}
    return out


def train_head(
    embeddings: np.ndarray,
    labels: Sequence[Sequence[str]],
    recordings: Sequence[str],
    sites: Sequence[str | None],
    embedding_model_id: str,
    classes: Sequence[str] | None = None,
    kind: str = "linear",
    hidden: int = 64,
    val_fraction: float = 0.25,
    test_fraction: float = 0.0,
    test_sites: list[str] | None = None,
    split_by: str = "recording",
    target_precision: float | None = 0.9,
    weight_decay: float = 1e-3,
    steps: int = 300,
    seed: int = 0,
    sample_weight: Sequence[float] | None = None,
) -> tuple[Head, list[str]]:
    """A head on labelled windows' embeddings, and the split ('train' | 'val' | 'test') of each window.

    ``labels``: the classes present in each window (empty: a negative). Windows are split as
    ``pam train`` splits clips (whole recordings, or sites, stratified), the head is fitted on
    the training windows, thresholds are calibrated on the validation windows for
    ``target_precision``, and the card records validation (and test) metrics. ``sample_weight``
    (one per window) weighs the training windows in the loss.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    n = len(x)
    if x.ndim != 2 or n == 0:
        raise HeadError(f"embeddings of shape {np.shape(embeddings)}: give one row per labelled window")
    if not len(labels) == len(recordings) == len(sites) == n:
        raise HeadError(f"{n} embeddings, {len(labels)} label sets, {len(recordings)} recordings and "
                        f"{len(sites)} sites: give one of each per window")
    if kind not in KINDS:
        raise HeadError(f"unknown head kind {kind!r}: use one of {', '.join(KINDS)}")
    if not np.isfinite(x).all():
        raise HeadError("embeddings hold NaN or infinite values: recompute them")
    clips = [LabelledClip(path=Path(str(r)), start_s=0.0, end_s=0.0, labels=tuple(lab), site=s, recording=str(r))
             for lab, r, s in zip(labels, recordings, sites)]
    classes = list(classes) if classes is not None else sorted({c for lab in labels for c in lab})
    if not classes:
        raise HeadError("no window is labelled with a class: a head needs positives")
    y = label_matrix(clips, classes)
    try:
        split = assign_splits(clips, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                              by=split_by, test_sites=test_sites)
    except ValueError as e:
        raise HeadError(f"cannot split the labelled windows: {e}") from None
    part = {name: np.array([s == name for s in split]) for name in ("train", "val", "test")}
    missing = [c for k, c in enumerate(classes) if not y[part["train"], k].any()]
    if missing:
        raise HeadError(f"no training positives for {missing}: label more windows of them, from more recordings")
    provisional = fit_head(x[part["train"]], y[part["train"]], classes, embedding_model_id, kind, hidden,
                           weight_decay, steps, seed,
                           None if sample_weight is None else np.asarray(sample_weight, dtype=float)[part["train"]])
    weights = provisional.weights
    val_scores = provisional.scores(x[part["val"]], embedding_model_id)
    chosen = calibrate(y[part["val"]], val_scores, classes, target_precision)
    thresholds = {c: chosen[c].threshold for c in classes}
    metrics = {"split_windows": {k: int(v.sum()) for k, v in part.items()},
               "calibration": {c: chosen[c].to_dict() for c in classes},
               "val": split_metrics(provisional, x[part["val"]], y[part["val"]], embedding_model_id, thresholds),
               "test": split_metrics(provisional, x[part["test"]], y[part["test"]], embedding_model_id, thresholds)}
    card = HeadCard(embedding_model_id=embedding_model_id, embedding_dim=int(x.shape[1]), classes=tuple(classes),
                    thresholds=thresholds, kind=kind, hidden=hidden if kind == "mlp" else 0,
                    training_fingerprint=training_fingerprint(embeddings, labels, recordings, sites),
                    metrics=json.loads(json.dumps(metrics, default=float)))
    return Head(card, weights), split
