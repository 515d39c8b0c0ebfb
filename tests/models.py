"""Tiny untrained checkpoints for pipeline tests: class 'a' fires on every window
(threshold 0) and class 'b' never does, so the expected detections are exactly the windows."""

from __future__ import annotations

from pathlib import Path

import torch

from pam.detect.checkpoint import save_checkpoint
from pam.detect.model import Architecture, ModelCard


def every_window_model(path: Path, window_s: float = 3.0, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    card = ModelCard(name="every-window", classes=["a", "b"], window_s=window_s,
                     arch=Architecture(width=4, stages=1), thresholds={"a": 0.0, "b": 1.0})
    save_checkpoint(path, card.build(), card)
    return path
