"""Checkpoint files: weights plus the model card, in one file, validated on load.

The file is a plain ``torch.save`` dict readable with ``weights_only=True`` (no pickled
code). The model id is a hash of the file's bytes, so any change to weights or thresholds
gives a new id and detections always say exactly which model made them.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import torch

from pam import __version__
from pam.detect.contract import DetectionModel, ModelError, ModelOutput
from pam.detect.model import Architecture, ModelCard, PamNet, SpectrogramSettings

FORMAT = "pam-checkpoint"
VERSION = 1
BUNDLED = "bobwhite-v2.pt"


BUNDLED_LICENCE = "MIT (pam; trained on GAMELab-UGA/NorthernBobwhiteCNN clips, MIT)"


@dataclass(eq=False)
class LoadedModel(DetectionModel):
    """A pam checkpoint as a model of the contract: PamNet (log-mel front end, ResNet, sigmoid head)."""

    net: PamNet
    card: ModelCard
    model_id: str
    path: Path
    created_at: datetime | None = None  # when the checkpoint was written (UTC); None if it does not say

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def sample_rate(self) -> int:
        return self.card.sample_rate

    @property
    def window_s(self) -> float:
        return self.card.window_s

    @property
    def classes(self) -> list[str]:
        return self.card.classes

    @property
    def thresholds(self) -> dict[str, float]:
        return self.card.thresholds

    @property
    def embedding_size(self) -> int:
        return int(self.net.head.in_features)

    @property
    def source(self) -> str:
        return str(self.path)

    @property
    def licence(self) -> str:
        if Path(self.path).resolve() == bundled_model_path().resolve():
            return BUNDLED_LICENCE
        return str(self.card.training.get("licence") or "unknown (a pam checkpoint: its author's terms)")

    def forward(self, audio: torch.Tensor) -> ModelOutput:
        emb = self.net.embed(audio)
        return ModelOutput(torch.sigmoid(self.net.head(self.net.dropout(emb)).float()), emb)

    def to(self, device: torch.device | str) -> "LoadedModel":
        self.net.to(device).eval()
        return self


def _created_at(value: object) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def model_id_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def bundled_model_path() -> Path:
    """The Northern Bobwhite covey-call model shipped inside the package."""
    return Path(str(resources.files("pam") / "models" / BUNDLED))


def save_checkpoint(path: str | os.PathLike, net: PamNet, card: ModelCard, created_at: datetime | None = None) -> str:
    """Write atomically; returns the new model id. ``created_at`` (default: now) is kept when a
    card is amended without retraining."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the checkpoint's file name, e.g. {path / (card.name + '.pt')}")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "pam_version": __version__,
        "created_at": (created_at or datetime.now(timezone.utc)).isoformat(),
        "name": card.name,
        "classes": list(card.classes),
        "sample_rate": card.spectrogram.sample_rate,
        "window_s": float(card.window_s),
        "spectrogram": card.spectrogram.to_dict(),
        "arch": card.arch.to_dict(),
        "thresholds": {k: float(v) for k, v in card.thresholds.items()},
        "metrics": card.metrics,
        "training": card.training,
        "parent_id": card.parent_id,
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return model_id_of(path)


# what to give instead of a file that is not a pam checkpoint
MODEL_FIX = "give a .pt written by pam train, an .onnx file with its card, or a model's short name (docs/models.md)"


def _require(payload: dict, key: str, kind: type | tuple, where: str):
    if key not in payload:
        raise ModelError(f"{where}: checkpoint has no '{key}'")
    if not isinstance(payload[key], kind):
        raise ModelError(f"{where}: '{key}' should be {kind}, got {type(payload[key]).__name__}")
    return payload[key]


def load_checkpoint(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load and validate a checkpoint (the bundled model when ``path`` is None)."""
    path = Path(path) if path is not None else bundled_model_path()
    where = str(path)
    if not path.is_file():
        raise ModelError(f"{where}: model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise ModelError(f"{where}: not a pam checkpoint (torch.load failed: {type(exc).__name__}: "
                         f"{str(exc)[:120]}); {MODEL_FIX}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{where}: not a pam checkpoint (a PyTorch file without pam's format tag); {MODEL_FIX}")
    version = _require(payload, "version", int, where)
    if version > VERSION:
        raise ModelError(f"{where}: checkpoint version {version} is newer than this pam reads ({VERSION}); upgrade pam")
    classes = _require(payload, "classes", list, where)
    if not classes or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise ModelError(f"{where}: 'classes' must be distinct non-empty names")
    spec_dict = _require(payload, "spectrogram", dict, where)
    arch_dict = _require(payload, "arch", dict, where)
    try:
        spectrogram = SpectrogramSettings(**spec_dict)
        arch = Architecture(**arch_dict)
    except TypeError as exc:
        raise ModelError(f"{where}: unknown spectrogram or architecture setting ({exc})") from None
    if _require(payload, "sample_rate", int, where) != spectrogram.sample_rate:
        raise ModelError(f"{where}: sample_rate {payload['sample_rate']} disagrees with the spectrogram's {spectrogram.sample_rate}")
    window_s = float(_require(payload, "window_s", (int, float), where))
    if window_s <= 0:
        raise ModelError(f"{where}: window_s must be positive, got {window_s}")
    thresholds = payload.get("thresholds") or {}
    unknown = set(thresholds) - set(classes)
    if unknown:
        raise ModelError(f"{where}: thresholds name classes the model does not have: {sorted(unknown)}")
    if any(not 0 <= float(t) <= 1 for t in thresholds.values()):
        raise ModelError(f"{where}: thresholds must lie between 0 and 1")
    card = ModelCard(
        name=str(payload.get("name") or path.stem),
        classes=classes,
        window_s=window_s,
        spectrogram=spectrogram,
        arch=arch,
        thresholds={k: float(v) for k, v in thresholds.items()},
        metrics=payload.get("metrics") or {},
        training=payload.get("training") or {},
        parent_id=payload.get("parent_id"),
    )
    net = card.build()
    state = _require(payload, "state_dict", dict, where)
    head = state.get("head.weight")
    if head is not None and head.shape[0] != len(classes):
        raise ModelError(f"{where}: the head has {head.shape[0]} outputs but {len(classes)} classes are named")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise ModelError(f"{where}: weights do not fit the declared architecture ({first[:200]})") from None
    net.eval().to(device)
    return LoadedModel(net=net, card=card, model_id=model_id_of(path), path=path,
                       created_at=_created_at(payload.get("created_at")))
