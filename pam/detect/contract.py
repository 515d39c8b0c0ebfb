"""What pam needs of a model to run it over recordings: the model contract.

A model is its sample rate, window length, class list (each class a label, with a
scientific and a common name where known), per-class thresholds, an embedding size (0 when
it gives none), where it comes from and under what licence, a model id that changes
whenever its scores could, and a forward from a float audio batch [B, samples] at its rate
to scores [B, C] in [0, 1] (and embeddings [B, E] where it has them).

pam's own checkpoints (``pam.detect.checkpoint.LoadedModel``), ONNX files with a card
(``pam.detect.onnx_model``) and any PyTorch module wrapped in ``TorchModel`` (how a model
such as BirdNET plugs in) implement it; ``pam.detect.catalog`` turns a `--model` value
into one. The detection path, the store and everything after it see only this contract.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

DEFAULT_THRESHOLD = 0.5


class ModelError(ValueError):
    """A model (file, card or definition) that cannot be used, with the reason in one line."""


@dataclass(frozen=True)
class ModelOutput:
    scores: torch.Tensor  # [B, C] in [0, 1]
    embeddings: torch.Tensor | None = None  # [B, E], or None for a model without embeddings


def _few(names: list[str] | set[str], n: int = 5) -> str:
    names = sorted(names)
    return ", ".join(map(repr, names[:n])) + (f" and {len(names) - n} more" if len(names) > n else "")


class DetectionModel(ABC):
    """The contract. Subclasses set the attributes and implement ``forward`` and ``to``."""

    model_id: str
    name: str
    sample_rate: int
    window_s: float
    classes: list[str]  # labels, as detection rows carry them
    thresholds: dict[str, float]  # per class; a class not named gets DEFAULT_THRESHOLD
    scientific_names: list[str | None] | None = None  # per class, where known
    common_names: list[str | None] | None = None
    embedding_size: int = 0
    source: str = ""  # a file, a package or a URL
    licence: str = "unknown"
    autocast: bool = True  # the forward may run under bf16 autocast on CUDA (PyTorch models)

    @abstractmethod
    def forward(self, audio: torch.Tensor) -> ModelOutput:
        """Scores (and embeddings) of windows ``audio`` [B, window samples] at ``sample_rate``."""

    @abstractmethod
    def to(self, device: torch.device | str) -> "DetectionModel":
        """Move the model to ``device`` (in place) and return it."""

    @property
    def window_samples(self) -> int:
        return round(self.window_s * self.sample_rate)

    def describe(self) -> str:
        return f"{self.name} ({self.model_id})"

    def threshold_vector(self, overrides: dict[str, float] | None = None,
                         min_score: float | None = None) -> np.ndarray:
        """One threshold per class: the model's, or ``min_score`` for all, then ``overrides`` by label."""
        if min_score is not None:
            values = np.full(len(self.classes), float(min_score), dtype=np.float32)
        else:
            values = np.array([self.thresholds.get(c, DEFAULT_THRESHOLD) for c in self.classes], dtype=np.float32)
        if overrides:
            index = {c: i for i, c in enumerate(self.classes)}
            for label, t in overrides.items():
                if label in index:
                    values[index[label]] = float(t)
        return values

    def check(self) -> "DetectionModel":
        """Raise ModelError when the description is inconsistent; returns the model."""
        where = f"model {getattr(self, 'name', '?')}"
        if not isinstance(self.sample_rate, (int, np.integer)) or isinstance(self.sample_rate, bool) \
                or self.sample_rate <= 0:
            raise ModelError(f"{where}: sample_rate must be a positive whole number of Hz, got {self.sample_rate!r}")
        if not isinstance(self.window_s, (int, float)) or isinstance(self.window_s, bool) or self.window_s <= 0:
            raise ModelError(f"{where}: window_s must be a positive number of seconds, got {self.window_s!r}")
        classes = self.classes
        if not classes or not all(isinstance(c, str) and c for c in classes):
            raise ModelError(f"{where}: classes must be a non-empty list of non-empty names")
        if len(set(classes)) != len(classes):
            seen: set[str] = set()
            twice = {c for c in classes if c in seen or seen.add(c)}
            raise ModelError(f"{where}: class names must be distinct; repeated: {_few(twice)}")
        unknown = set(self.thresholds) - set(classes)
        if unknown:
            raise ModelError(f"{where}: thresholds name classes the model does not have: {_few(unknown)}")
        if any(not 0 <= float(t) <= 1 for t in self.thresholds.values()):
            raise ModelError(f"{where}: thresholds must lie between 0 and 1")
        for kind in ("scientific_names", "common_names"):
            names = getattr(self, kind)
            if names is not None and len(names) != len(classes):
                raise ModelError(f"{where}: {len(names)} {kind} for {len(classes)} classes; give one per class")
        return self


def class_table(model: DetectionModel) -> list[dict]:
    """One dict per class: label, scientific and common name (None where unknown), threshold."""
    sci = model.scientific_names or [None] * len(model.classes)
    common = model.common_names or [None] * len(model.classes)
    return [{"label": c, "scientific_name": s, "common_name": n,
             "threshold": float(model.thresholds.get(c, DEFAULT_THRESHOLD))}
            for c, s, n in zip(model.classes, sci, common)]


@dataclass(eq=False)
class TorchModel(DetectionModel):
    """Any PyTorch module as a model: ``module(audio)`` returns scores [B, C] in [0, 1], or
    (scores, embeddings). Set ``logits=True`` when it returns logits; pam applies the sigmoid."""

    module: torch.nn.Module | Callable
    model_id: str
    name: str
    sample_rate: int
    window_s: float
    classes: list[str]
    thresholds: dict[str, float] = field(default_factory=dict)
    scientific_names: list[str | None] | None = None
    common_names: list[str | None] | None = None
    embedding_size: int = 0
    source: str = ""
    licence: str = "unknown"
    logits: bool = False
    autocast: bool = True

    def forward(self, audio: torch.Tensor) -> ModelOutput:
        out = self.module(audio)
        scores, emb = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
        scores = scores.float()
        return ModelOutput(torch.sigmoid(scores) if self.logits else scores, emb)

    def to(self, device: torch.device | str) -> "TorchModel":
        if isinstance(self.module, torch.nn.Module):
            self.module.to(device).eval()
        return self
