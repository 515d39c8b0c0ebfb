"""Bring your own model: an ONNX file with a small card beside it, run through ONNX Runtime.

``NAME.onnx`` takes one input, float audio [batch, samples] at the card's sample rate
(``window_s`` seconds per row), and gives scores [batch, classes] as its first output
(probabilities, or logits with ``outputs: logits``); ``embeddings_output`` may name a second
output [batch, E]. ``NAME.card.yaml`` (or ``NAME.card.json``) describes it::

    name: my-frogs            # optional; default: the file name
    sample_rate: 32000        # Hz, a whole number
    window_s: 5.0
    labels: [Rana_sylvatica, Lithobates_clamitans]
    thresholds: {Rana_sylvatica: 0.4}   # or one number for all; default 0.5
    common_names: [Wood Frog, Green Frog]   # optional, one per label; scientific_names too
    outputs: scores           # or logits (pam applies a sigmoid)
    embeddings_output: null   # the name of an embeddings output, if any
    licence: CC BY 4.0
    source: https://example.org/my-frogs

The model id is a hash of both files, so new weights or thresholds are new work. Every
problem (no card, a bad card, a corrupt file, labels that do not match the output width) is
one ModelError line when the model is loaded, before any audio is read: loading runs one
silent window through the model. ONNX Runtime is the optional extra ``pam[onnx]``
(docs/benchmarks.md measures it against a PyTorch conversion).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from pam.detect.contract import DetectionModel, ModelError, ModelOutput

CARD_SUFFIXES = (".card.yaml", ".card.yml", ".card.json")
CARD_KEYS = {"name", "sample_rate", "window_s", "labels", "thresholds", "scientific_names", "common_names",
             "outputs", "embeddings_output", "licence", "source"}
INSTALL_HINT = "pip install 'pam[onnx]' (or pip install onnxruntime)"


def card_path_of(onnx_path: Path) -> Path | None:
    """The card beside ``NAME.onnx`` (NAME.card.yaml, .yml or .json), or None."""
    for suffix in CARD_SUFFIXES:
        candidate = onnx_path.with_name(onnx_path.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def _names(card: dict, key: str, n: int, where: str) -> list[str | None] | None:
    value = card.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != n or not all(v is None or isinstance(v, str) for v in value):
        raise ModelError(f"{where}: {key} must be a list of {n} names (one per label, null where unknown)")
    return value


def read_card(path: Path) -> dict:
    """The card's values, checked for type; raises ModelError naming the file and the key."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        card = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{where}: not a readable card ({first[:150]})") from None
    if not isinstance(card, dict):
        raise ModelError(f"{where}: a card is a mapping of keys (sample_rate, window_s, labels, ...)")
    unknown = sorted(set(card) - CARD_KEYS)
    if unknown:
        raise ModelError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(CARD_KEYS))})")
    for key in ("sample_rate", "window_s", "labels"):
        if key not in card:
            raise ModelError(f"{where}: the card has no {key}")
    rate = card["sample_rate"]
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        raise ModelError(f"{where}: sample_rate must be a positive whole number of Hz, got {rate!r}")
    window = card["window_s"]
    if not isinstance(window, (int, float)) or isinstance(window, bool) or window <= 0:
        raise ModelError(f"{where}: window_s must be a positive number of seconds, got {window!r}")
    labels = card["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
        raise ModelError(f"{where}: labels must be a non-empty list of names")
    thresholds = card.get("thresholds")
    if thresholds is None:
        thresholds = {}
    elif isinstance(thresholds, (int, float)) and not isinstance(thresholds, bool):
        thresholds = {label: float(thresholds) for label in labels}
    elif not isinstance(thresholds, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in thresholds.values()):
        raise ModelError(f"{where}: thresholds must be one number or a mapping of label to number")
    outputs = card.get("outputs", "scores")
    if outputs not in ("scores", "logits"):
        raise ModelError(f"{where}: outputs must be 'scores' (values in [0, 1]) or 'logits', got {outputs!r}")
    for key in ("name", "embeddings_output", "licence", "source"):
        if card.get(key) is not None and not isinstance(card[key], str):
            raise ModelError(f"{where}: {key} must be text, got {card[key]!r}")
    return {**card, "window_s": float(window), "thresholds": {str(k): float(v) for k, v in thresholds.items()},
            "outputs": outputs, "scientific_names": _names(card, "scientific_names", len(labels), where),
            "common_names": _names(card, "common_names", len(labels), where)}


def files_id(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


class OnnxModel(DetectionModel):
    """An ONNX file and its card, run by ONNX Runtime (CPU, or CUDA when its provider is installed)."""

    autocast = False

    def __init__(self, path: Path, card_path: Path, card: dict):
        self.path, self.card_path = path, card_path
        self.model_id = files_id(path, card_path)
        self.name = card.get("name") or path.stem
        self.sample_rate = int(card["sample_rate"])
        self.window_s = float(card["window_s"])
        self.classes = list(card["labels"])
        self.thresholds = dict(card["thresholds"])
        self.scientific_names = card["scientific_names"]
        self.common_names = card["common_names"]
        self.licence = card.get("licence") or "unknown"
        self.source = card.get("source") or str(path)
        self.logits = card["outputs"] == "logits"
        self.embeddings_output = card.get("embeddings_output")
        self.device = torch.device("cpu")
        self.session = self._session("cpu")
        self.check()
        self.embedding_size = self._dry_run()

    def _session(self, device: str):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types for a corrupt file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.path}: not a loadable ONNX model ({first[:160]})") from None

    def _dry_run(self) -> int:
        """Run one silent window; check the input and output shapes against the card. Returns E (0: none)."""
        where = str(self.path)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 2:
            raise ModelError(f"{where}: the model must take one input [batch, samples]; it takes "
                             f"{[(i.name, i.shape) for i in inputs]}")
        width = inputs[0].shape[1]
        if isinstance(width, int) and width != self.window_samples:
            raise ModelError(f"{where}: the model takes {width} samples per window but the card says "
                             f"{self.window_s} s at {self.sample_rate} Hz ({self.window_samples} samples)")
        names = [o.name for o in self.session.get_outputs()]
        if self.embeddings_output is not None and self.embeddings_output not in names:
            raise ModelError(f"{where}: the card names embeddings_output {self.embeddings_output!r}; "
                             f"the model's outputs are {names}")
        scores, emb = self._run(np.zeros((1, self.window_samples), dtype=np.float32))
        if scores.ndim != 2 or scores.shape[1] != len(self.classes):
            raise ModelError(f"{where}: the card lists {len(self.classes)} labels but the model's first output "
                             f"has shape {list(scores.shape)}; give one label per output column")
        return int(emb.shape[1]) if emb is not None and emb.ndim == 2 else 0

    def _run(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        names = [self.session.get_outputs()[0].name]
        if self.embeddings_output is not None:
            names.append(self.embeddings_output)
        try:
            out = self.session.run(names, {self.session.get_inputs()[0].name: audio})
        except Exception as exc:  # noqa: BLE001 - a model that cannot run a window is a bad model
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.path}: the model fails on a [batch, {audio.shape[1]}] window batch "
                             f"({first[:160]})") from None
        return out[0], (out[1] if len(out) > 1 else None)

    def forward(self, audio: torch.Tensor) -> ModelOutput:
        scores, emb = self._run(np.ascontiguousarray(audio.detach().float().cpu().numpy()))
        s = torch.from_numpy(np.asarray(scores, dtype=np.float32)).to(audio.device)
        e = torch.from_numpy(np.asarray(emb, dtype=np.float32)).to(audio.device) if emb is not None else None
        return ModelOutput(torch.sigmoid(s) if self.logits else s, e)

    def to(self, device: torch.device | str) -> "OnnxModel":
        device = torch.device(device)
        if device.type != self.device.type:
            self.session = self._session(device.type)
            self.device = device
        return self


def load_onnx_model(path: str | Path) -> OnnxModel:
    """An ONNX file and the card beside it as a model; ModelError (one line) when either is unusable."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    card = card_path_of(path)
    if card is None:
        raise ModelError(f"{path}: no card beside it ({path.stem}.card.yaml or .card.json with sample_rate, "
                         "window_s and labels); see docs/models.md")
    values = read_card(card)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ModelError(f"{path}: running ONNX models needs ONNX Runtime: {INSTALL_HINT}") from None
    return OnnxModel(path, card, values)
