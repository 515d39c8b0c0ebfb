"""Whether the clips being evaluated are ones the model was trained or validated on.

Training writes every clip of the run's split onto the model card (``card.training['clips']``,
written by ``clip_record``): the audio by content (``pam.io.manifest.fingerprint``: file name,
size, first and last 64 KiB, so moving or copying the data does not hide it), the clip's
start and end in seconds, and its split. A model trained before cards listed their clips
may have the list in a sidecar beside its checkpoint instead (``pam.train.clip_sidecar``,
written by ``python -m pam.train.backfill``, so the checkpoint and its model id stay as they
were); ``listed_clips`` reads the card's list first, else the sidecar's. ``seen_in_training``
matches evaluated clips (or soundscape windows) against that list: an item counts when it
overlaps a listed clip of the same audio. A model scored on its own training clips looks far
better than it will on new audio, so ``pam evaluate`` says so in one line and quotes the
card's held-out figure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pam.io.manifest import fingerprint as file_fingerprint
from pam.detect.checkpoint import LoadedModel, ModelError
from pam.detect.model import ModelCard
from pam.train.clip_sidecar import read_sidecar
from pam.train.clips import LabelledClip

CLIPS_KEY = "clips"  # card.training[CLIPS_KEY]: {"audio", "start_s", "end_s", "split"}, one entry per clip
SEEN_SPLITS = ("train", "val")  # the splits that shaped the weights, the epoch kept and the thresholds


class AudioFingerprints:
    """``pam.io.manifest.fingerprint`` of each file, computed once; None for a file that cannot be read."""

    def __init__(self) -> None:
        self._cache: dict[str, str | None] = {}

    def __call__(self, path: str | os.PathLike) -> str | None:
        key = str(path)
        if key not in self._cache:
            p = Path(key)
            try:
                self._cache[key] = file_fingerprint(p, p.stat().st_size)
            except OSError:
                self._cache[key] = None
        return self._cache[key]


def clip_record(clips: Sequence[LabelledClip], splits: Sequence[str]) -> dict[str, list]:
    """The card's list of the clips a model was trained, validated and tested on, by content."""
    fingerprints = AudioFingerprints()
    return {"audio": [fingerprints(c.path) for c in clips], "start_s": [float(c.start_s) for c in clips],
            "end_s": [float(c.end_s) for c in clips], "split": list(splits)}


def listed_clips(model: LoadedModel) -> dict[str, list] | None:
    """The clips ``model`` was trained, validated and tested on: its card's list, else the sidecar's
    beside its checkpoint, else None. Raises ModelError for a sidecar of another model id."""
    return model.card.training.get(CLIPS_KEY) or read_sidecar(model.path, model.model_id)


@dataclass
class SeenInTraining:
    """How many evaluated items overlap the clips on the model's card, by split.

    An item overlapping clips of several splits counts once, under the first of train, val, test.
    ``recorded`` is False when no list of the model's clips is known (then nothing can be said).
    """

    items: int
    recorded: bool
    per_split: dict[str, int] = field(default_factory=dict)

    @property
    def seen(self) -> int:
        """Items the model was trained or validated on."""
        return sum(self.per_split.get(s, 0) for s in SEEN_SPLITS)


def seen_in_training(listed: dict[str, list] | None, items: pd.DataFrame) -> SeenInTraining:
    """Match evaluated ``items`` (columns ``path``, ``start_s``, ``end_s``) against ``listed``, a model's
    clip list (``listed_clips``; None when it has none)."""
    if not listed:
        return SeenInTraining(items=len(items), recorded=False)
    known = pd.DataFrame({k: listed[k] for k in ("audio", "start_s", "end_s", "split")})
    by_audio = {fp: group for fp, group in known.groupby("audio", sort=False)}
    order = ["train", "val", "test"]
    per_split = dict.fromkeys(order, 0)
    fingerprints = AudioFingerprints()
    for path, group in items.groupby("path", sort=False):
        clips = by_audio.get(fingerprints(path))
        if clips is None:
            continue
        start = group["start_s"].to_numpy(float)[:, None]
        end = group["end_s"].to_numpy(float)[:, None]
        overlaps = (clips["start_s"].to_numpy(float)[None, :] < end) & (clips["end_s"].to_numpy(float)[None, :] > start)
        taken = np.zeros(len(group), dtype=bool)
        for split in order:
            hit = overlaps[:, (clips["split"] == split).to_numpy()].any(axis=1) & ~taken
            per_split[split] += int(hit.sum())
            taken |= hit
    return SeenInTraining(items=len(items), recorded=True, per_split=per_split)


def held_out_figure(card: ModelCard) -> str:
    """The card's macro AP on its test split, else its validation split, with the number of clips."""
    per_split = (card.training.get("data") or {}).get("per_split") or {}
    for split, name in (("test", "test"), ("val", "validation")):
        ap = ((card.metrics.get(split) or {}).get("macro") or {}).get("ap")
        if isinstance(ap, (int, float)):
            n = per_split.get(split)
            return f"{name} macro AP {ap:.3f}" + (f" on {n} clip{'' if n == 1 else 's'}" if n else "")
    return ""


def seen_message(card: ModelCard, seen: SeenInTraining, unit: str = "clips") -> str | None:
    """One line for ``pam evaluate`` when evaluated items were training or validation data, else None."""
    if not seen.recorded:
        if card.training:  # trained by pam before cards listed their clips
            return (f"note: {card.name}'s card does not list its training clips, so pam cannot tell whether "
                    f"these {unit} were among them")
        return None
    if not seen.seen:
        return None
    parts = [f"{seen.per_split[s]} {label}" for s, label in (("train", "training"), ("val", "validation"))
             if seen.per_split.get(s)]
    held = held_out_figure(card)
    return (f"warning: {seen.seen} of {seen.items} {unit} were in {card.name}'s own training data "
            f"({', '.join(parts)} {unit}), so these figures are not held-out; "
            + (f"its card's held-out figure: {held}" if held else "its card has no held-out figure"))


def seen_note(model: LoadedModel, items: pd.DataFrame, unit: str = "clips") -> str | None:
    """``seen_message`` for ``model`` and the evaluated ``items``; a note when its sidecar is refused."""
    try:
        listed = listed_clips(model)
    except ModelError as exc:
        return f"note: pam cannot tell whether these {unit} were {model.card.name}'s training data: {exc}"
    return seen_message(model.card, seen_in_training(listed, items), unit)
