"""pam checkpoints to ONNX: ``NAME.onnx`` (scores and embeddings of an audio batch) and the
card ``NAME.card.yaml`` beside it, so that the pair runs anywhere ONNX Runtime does, and in
pam as a bring-your-own model (``pam.detect.onnx_model``).

The graph includes the log-mel front end (ONNX's STFT operator), takes float audio
[batch, samples] at the model's rate and outputs sigmoid scores [batch, classes] and the
head's input as embeddings. Export needs the ``onnx`` extra (onnx, onnxscript for
``torch.onnx.export``'s exporter, onnxruntime to check the file).
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from pathlib import Path

import numpy as np
import torch
import yaml

from pam.detect.checkpoint import LoadedModel
from pam.detect.contract import ModelError
from pam.detect.onnx_model import INSTALL_HINT, load_onnx_model


class _ScoresAndEmbeddings(torch.nn.Module):
    def __init__(self, model: LoadedModel):
        super().__init__()
        self.net = model.net

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.net.embed(audio)
        return torch.sigmoid(self.net.head(emb)), emb


def card_of(model: LoadedModel) -> dict:
    """The card that describes the exported file: the checkpoint's rate, window, classes and thresholds."""
    return {
        "name": model.name,
        "sample_rate": int(model.sample_rate),
        "window_s": float(model.window_s),
        "labels": list(model.classes),
        "thresholds": {c: float(t) for c, t in model.thresholds.items()},
        "outputs": "scores",
        "embeddings_output": "embeddings",
        "licence": model.licence,
        "source": f"exported by pam from checkpoint {model.path.name} (model id {model.model_id})",
    }


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def export_onnx(model: LoadedModel, out: str | os.PathLike, *, check_windows: int = 4) -> tuple[Path, Path, float]:
    """Write ``out`` (.onnx) and its card; returns both paths and the largest score difference
    between the file (through ONNX Runtime) and the checkpoint on ``check_windows`` noise windows."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ModelError(f"{out}: the exported file's name must end in .onnx")
    if out.is_dir():
        raise ModelError(f"{out} is a folder; give the file name, e.g. {out / (model.name + '.onnx')}")
    try:
        import onnxscript  # noqa: F401 - torch.onnx.export's exporter
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ModelError(f"exporting to ONNX needs onnx, onnxscript and onnxruntime: {INSTALL_HINT}") from None
    model.to("cpu")
    wrapper = _ScoresAndEmbeddings(model).eval()
    example = torch.zeros(2, model.window_samples)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{uuid.uuid4().hex[:8]}.tmp.onnx")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
            torch.onnx.export(wrapper, (example,), str(tmp), dynamo=True, external_data=False,
                              input_names=["audio"], output_names=["scores", "embeddings"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types
        if tmp.exists():
            tmp.unlink()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{model.path}: could not be exported to ONNX ({first[:200]})") from None
    _replace(tmp, out)
    card_path = out.with_name(out.stem + ".card.yaml")
    tmp_card = card_path.with_name(f".{card_path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp_card.write_text(yaml.safe_dump(card_of(model), sort_keys=False, allow_unicode=True), encoding="utf-8")
    _replace(tmp_card, card_path)
    exported = load_onnx_model(out)
    generator = torch.Generator().manual_seed(0)
    audio = 0.05 * torch.randn(check_windows, model.window_samples, generator=generator)
    with torch.inference_mode():
        diff = np.abs(exported.forward(audio).scores.numpy() - model.forward(audio).scores.numpy()).max()
    return out, card_path, float(diff)
