"""``pam train-head CONFIG``: a few-shot head on the stored embeddings of labelled windows.

Labels come in the formats ``pam train`` reads (the config's ``data`` section: clip tables,
Raven folders, class folders), which includes the clip table ``pam review-import`` writes.
Each labelled clip is matched to the stored window of the embedding model that overlaps it
most (same recording path); the head (``pam.train.heads``) is trained on those windows' stored
embeddings, split by recording or site, its thresholds calibrated, and written as one ``.npz``
with its card beside it (``<out>.card.json``), and registered in the store
(``pam.train.head_registry``; ``register_in_store: false`` leaves it a file only). No audio is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pam.analysis.similar import embedding_models
from pam.config import ConfigError, format_errors, read_yaml_mapping
from pam.store.embeddings import read_embeddings
from pam.store.location import store_uri
from pam.store.runs import window_lengths
from pam.store.store import Store
from pam.train.clips import LabelledClip
from pam.train.config import DataSection, SplitSection
from pam.train.head_registry import register_head
from pam.train.heads import Head, HeadError, train_head
from pam.train.labels import load_sources


class HeadSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["linear", "mlp"] = Field("linear", description="linear (logistic) or mlp (one hidden layer)")
    hidden: int = Field(64, gt=0, description="hidden units of the mlp")
    target_precision: float = Field(0.9, gt=0, le=1, description="each class's threshold is calibrated for this "
                                                                 "precision on the validation windows")
    steps: int = Field(300, gt=0, description="optimiser steps")
    weight_decay: float = Field(1e-3, ge=0)


class HeadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    store: str = Field(..., description="the store holding the embeddings")
    model: str | None = Field(None, description="embedding model id; default: the store's only one")
    data: DataSection
    split: SplitSection = Field(default_factory=SplitSection)
    head: HeadSection = Field(default_factory=HeadSection)
    out: str = Field(..., description="the head file to write (.npz); its card goes beside it (.card.json)")
    register_in_store: bool = Field(True, description="register the head in the store (STORE/heads/), so that "
                                             "`pam apply-head STORE HEAD_ID` and the nightly flow can name it by id")


def load_head_config(path: str | os.PathLike) -> HeadConfig:
    """Read and validate; relative paths are read from the config file's folder."""
    path = Path(path)
    data = read_yaml_mapping(path)
    try:
        conf = HeadConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(str(path), exc, [], HeadConfig)) from None
    base = path.resolve().parent
    absolute = lambda p: str(p if Path(p).expanduser().is_absolute() else (base / p).resolve())  # noqa: E731
    data = conf.data.model_dump()
    for key in ("tables", "raven", "class_folders"):
        for src in data[key]:
            src["path"] = absolute(src["path"])
    store = conf.store if store_uri(conf.store) else absolute(conf.store)  # an object-store URI is no path
    if store_uri(conf.store) and conf.register_in_store:  # refused before training, not after it
        raise ConfigError(f"{path}: store {conf.store} is on object storage, where the head registry is not kept; "
                          "set register_in_store: false (the head stays a file) or name a local store")
    return conf.model_copy(update={"store": store, "out": absolute(conf.out),
                                   "data": DataSection.model_validate(data)})


@dataclass
class TrainedHead:
    head: Head
    path: Path
    card_path: Path
    windows: int
    split: dict[str, int]
    registered: bool = False
    store: str | None = None  # where it was registered


def embedding_model(store: Store, model_id: str | None) -> str:
    """The embedding model the head reads: the one named, or the store's only one."""
    models = embedding_models(store)
    if model_id is not None and model_id not in models:
        raise HeadError(f"store {store.uri} holds no embeddings of model {model_id} (it has: "
                        f"{', '.join(models) or 'none'}); run `pam detect` with detect.embeddings: true")
    if model_id is None and len(models) != 1:
        raise HeadError(f"store {store.uri} holds embeddings of {len(models)} models ({', '.join(models)}); "
                        "name one with `model:` in the config")
    return model_id or models[0]


def labelled_windows(store: Store, model_id: str, clips: list[LabelledClip]):
    """(embeddings [n, dims], label sets, recordings, sites) of the stored window that overlaps
    each clip most; HeadError lists the clips without one."""
    done = store.done_table(model_id=model_id, columns=["recording_id", "path", "site"]).drop_duplicates("recording_id")
    by_path = {str(Path(p).resolve()): (r, s) for r, p, s in zip(done["recording_id"], done["path"], done["site"])}
    wanted = {by_path[str(Path(c.path).resolve())][0] for c in clips if str(Path(c.path).resolve()) in by_path}
    emb = read_embeddings(store, model_id=model_id, recording_ids=sorted(wanted))
    lengths = window_lengths(store, model_id)
    rec = np.asarray(emb.rows.column("recording_id").to_pylist(), dtype=object)
    starts = emb.rows.column("start_s").to_numpy()
    ends = starts + np.array([lengths.get(k, 0.0) for k in emb.rows.column("settings_hash").to_pylist()])
    rows_of: dict[str, np.ndarray] = {r: np.flatnonzero(rec == r) for r in wanted}
    picked, missing = [], []
    for c in clips:
        found = by_path.get(str(Path(c.path).resolve()))
        idx = rows_of.get(found[0], np.empty(0, int)) if found else np.empty(0, int)
        overlap = np.minimum(ends[idx], c.end_s) - np.maximum(starts[idx], c.start_s)
        if not len(idx) or overlap.max() <= 0:
            missing.append(f"{c.path}@{c.start_s:g}-{c.end_s:g}s")
            continue
        picked.append((idx[np.argmax(overlap)], c, found))
    if missing:
        raise HeadError(f"{len(missing)} labelled clip(s) have no stored window of model {model_id} "
                        f"(run `pam detect` on their recordings with detect.embeddings: true): "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    x = emb.vectors[[i for i, _, _ in picked]]
    return (x, [c.labels for _, c, _ in picked], [f[0] for _, _, f in picked],
            [c.site or f[1] for _, c, f in picked])


def train_head_from_store(conf: HeadConfig) -> TrainedHead:
    """Labels -> stored embeddings of the labelled windows -> head file and card."""
    store = Store(conf.store)
    if not (store.location.exists() if store.remote else Path(conf.store).is_dir()):
        raise HeadError(f"store {conf.store} does not exist")
    model_id = embedding_model(store, conf.model)
    lengths = window_lengths(store, model_id)
    clips = load_sources(conf.data, window_s=max(lengths.values()) if lengths else 3.0)
    x, labels, recordings, sites = labelled_windows(store, model_id, clips)
    head, split = train_head(x, labels, recordings, sites, model_id, classes=conf.data.classes, kind=conf.head.kind,
                             hidden=conf.head.hidden, val_fraction=conf.split.val_fraction,
                             test_fraction=conf.split.test_fraction, test_sites=conf.split.test_sites or None,
                             split_by=conf.split.by, target_precision=conf.head.target_precision,
                             weight_decay=conf.head.weight_decay, steps=conf.head.steps, seed=conf.split.seed)
    Path(conf.out).parent.mkdir(parents=True, exist_ok=True)
    path = head.save(conf.out)
    card_path = Path(conf.out).with_suffix(".card.json")
    card_path.write_text(head.card.to_json())
    trained = TrainedHead(head, path, card_path, len(x), {s: split.count(s) for s in ("train", "val", "test")})
    if conf.register_in_store:
        register_head(store, head, source=path,
                      training={"windows": trained.windows, "split": trained.split, "config": conf.model_dump()})
        trained.registered, trained.store = True, str(store.root)
    return trained


def summary(trained: TrainedHead) -> dict:
    """What the command prints: head id, files, windows per split, thresholds and validation metrics."""
    card = trained.head.card
    return {"head_id": trained.head.head_id, "path": str(trained.path), "card": str(trained.card_path),
            "embedding_model_id": card.embedding_model_id, "kind": card.kind, "windows": trained.windows,
            "split": trained.split, "thresholds": dict(card.thresholds), "val": card.metrics.get("val", {}),
            "registered": trained.registered, "store": trained.store}
