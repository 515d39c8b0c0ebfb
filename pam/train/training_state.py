"""What a training run carries from one epoch to the next, and the run folder that keeps it.

``TrainingProgress`` is the history and the early-stopping bookkeeping, ``RandomGenerators``
the run's random number generators; with the network, optimiser and schedule they make
``last.pt`` in a run folder, written after every epoch, so that an interrupted run resumes
and ends exactly as an uninterrupted one. ``best.pt`` holds the best epoch's weights.
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch



class ResumeError(ValueError):
    """A run folder holds a training state that does not belong to this run."""


@dataclass
class TrainingProgress:
    """The history so far and the early-stopping bookkeeping of a run."""

    rows: list[dict] = field(default_factory=list)  # one history row per completed epoch
    best_loss: float = math.inf  # lowest validation loss of a kept epoch
    best_epoch: int = 0  # that epoch; 0 while none is kept
    bad: int = 0  # epochs since then without a better validation loss
    stopped: bool = False  # early stopping ended the run
    best_state: dict | None = None  # the best epoch's weights, on the CPU (in best.pt, not last.pt)

    def count_epoch(self, epoch: int, val_loss: float, min_epochs: int, min_delta: float) -> bool:
        """Count an epoch's validation loss for early stopping; True when it is the new best.

        Epochs before ``min_epochs`` are neither kept nor counted.
        """
        if epoch < min_epochs:
            return False
        if val_loss < self.best_loss - min_delta:
            self.best_loss, self.best_epoch, self.bad = val_loss, epoch, 0
            return True
        self.bad += 1
        return False

    def saved(self) -> dict:
        """The entries of ``last.pt`` that ``from_saved`` reads back."""
        return {"history": self.rows, "best_loss": self.best_loss, "best_epoch": self.best_epoch,
                "bad": self.bad, "stopped": self.stopped}

    @classmethod
    def from_saved(cls, saved: dict) -> "TrainingProgress":
        return cls(rows=list(saved["history"]), best_loss=saved["best_loss"], best_epoch=saved["best_epoch"],
                   bad=saved["bad"], stopped=saved["stopped"])


@dataclass
class RandomGenerators:
    """The generators a training run draws from; with torch's global ones they are saved and
    restored together, so a resumed run draws the same numbers as an uninterrupted one."""

    crops: torch.Generator  # where each training crop starts (CPU)
    augment: torch.Generator  # batch augmentation and SpecAugment (on the training device)
    order: np.random.Generator  # the order in which clips are drawn
    device: torch.device

    @classmethod
    def seeded(cls, seed: int, device: torch.device) -> "RandomGenerators":
        return cls(torch.Generator().manual_seed(seed), torch.Generator(device=device).manual_seed(seed + 1),
                   np.random.default_rng(seed), device)

    def state(self) -> dict:
        return {"cpu": self.crops.get_state(), "dev": self.augment.get_state(), "order": self.order.bit_generator.state,
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}

    def restore(self, saved: dict) -> None:
        self.crops.set_state(saved["cpu"])
        self.augment.set_state(saved["dev"])
        self.order.bit_generator.state = saved["order"]
        torch.set_rng_state(saved["torch"])
        if self.device.type == "cuda" and saved.get("cuda") is not None:
            torch.cuda.set_rng_state(saved["cuda"], self.device)


def save_atomic(obj: dict, path: Path) -> None:
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


class RunFolder:
    """A training run's folder: ``last.pt``, the whole state after the last completed epoch,
    and ``best.pt``, the best epoch's weights. ``fingerprint`` (``state_fingerprint``) ties
    them to one run's data and settings."""

    def __init__(self, path: str | os.PathLike, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def last_path(self) -> Path:
        return self.path / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.path / "best.pt"

    def load_last(self) -> dict | None:
        """The saved state, or None when there is none yet; another run's state is refused."""
        if not self.last_path.is_file():
            return None
        saved = torch.load(self.last_path, map_location="cpu", weights_only=False)
        if saved.get("fingerprint") != self.fingerprint:
            raise ResumeError(f"{self.last_path}: saved training state is from other data or settings; "
                              "use a new run folder (or start fresh) to train with these")
        return saved

    def load_best(self) -> dict | None:
        """The best epoch's weights, or None when there are none."""
        if not self.best_path.is_file():
            return None
        return torch.load(self.best_path, map_location="cpu", weights_only=True)["state"]

    def save_last(self, epoch: int, state: dict) -> None:
        save_atomic({"fingerprint": self.fingerprint, "epoch": epoch, **state}, self.last_path)

    def save_best(self, epoch: int, val_loss: float, weights: dict) -> None:
        save_atomic({"epoch": epoch, "val_loss": val_loss, "state": weights}, self.best_path)
