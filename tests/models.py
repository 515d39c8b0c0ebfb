"""Tiny untrained checkpoints for tests. ``every_window_model``: class 'a' fires on every window
(threshold 0) and class 'b' never does, so the expected detections are exactly the windows.
``model_listing_clips``: a card (or a sidecar beside the checkpoint) that lists given clips as
the model's training split."""

from __future__ import annotations

from pathlib import Path

import torch

from pam.detect.checkpoint import save_checkpoint
from pam.detect.model import Architecture, ModelCard
from pam.train.clip_sidecar import write_sidecar
from pam.train.seen import CLIPS_KEY, clip_record


def every_window_model(path: Path, window_s: float = 3.0, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    card = ModelCard(name="every-window", classes=["a", "b"], window_s=window_s,
                     arch=Architecture(width=4, stages=1), thresholds={"a": 0.0, "b": 1.0})
    save_checkpoint(path, card.build(), card)
    return path


def model_listing_clips(path: Path, clips: list, splits: list[str], metrics: dict | None = None,
                        in_sidecar: bool = False) -> Path:
    """An untrained one-class ('chirp') model whose card lists ``clips`` as its split, as training writes it
    (``in_sidecar``: in ``<stem>.clips.json`` beside it instead, as ``pam.train.backfill`` writes it)."""
    torch.manual_seed(0)
    card = ModelCard(name="listed", classes=["chirp"], window_s=0.5, arch=Architecture(width=4, stages=1),
                     thresholds={"chirp": 0.5}, metrics=metrics or {})
    card.training = {"data": {"per_split": {s: splits.count(s) for s in ("train", "val", "test")}}}
    if not in_sidecar:
        card.training[CLIPS_KEY] = clip_record(clips, splits)
    model_id = save_checkpoint(path, card.build(), card)
    if in_sidecar:
        write_sidecar(path, model_id, card.name, clip_record(clips, splits), "written by tests/models.py")
    return path
