"""The model registry: one Parquet row per trained model in ``STORE/models/``.

Detection already writes the model id (a hash of the checkpoint file) on every detection
row; the registry says what that id is: its name, classes, thresholds, the config and the
data (fingerprint) it was trained on, its metrics and the model it was fine-tuned from.
Registering the same checkpoint twice rewrites the same file, so it is idempotent.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import pam.store.schemas as schemas
from pam.detect.checkpoint import LoadedModel, bundled_model_path, load_checkpoint, model_id_of
from pam.store.location import require_local_root
from pam.store.store import Store, write_parquet_atomic


def models_dir(store: str | os.PathLike) -> Path:
    require_local_root(store, "the model registry (pam train with output.store)")
    return Path(store) / "models"


def register(store: str | os.PathLike, model_path: str | os.PathLike, *, config: dict | None = None,
             data_fingerprint: str | None = None, metrics: dict | None = None) -> dict:
    """Add a checkpoint to ``store``'s registry; returns the row written.

    ``config`` and ``data_fingerprint`` default to what the checkpoint's card records
    (``card.training['config']`` and ``card.training['data_fingerprint']``).
    """
    models_dir(store)  # refuses a store on object storage before any work
    model = load_checkpoint(model_path)
    card = model.card
    row = {
        **card_row(model),
        "metrics_json": json.dumps(metrics if metrics is not None else card.metrics, sort_keys=True, default=str),
        "config_json": json.dumps(config if config is not None else card.training.get("config", {}),
                                  sort_keys=True, default=str),
        "data_fingerprint": data_fingerprint or card.training.get("data_fingerprint"),
        "registered_at": datetime.now(timezone.utc),
    }
    table = pa.Table.from_pylist([row], schema=schemas.with_version("models"))
    write_parquet_atomic(table, models_dir(store) / f"model-{model.model_id}.parquet")
    return row


def card_row(model: LoadedModel) -> dict:
    """A registry row's columns as the checkpoint's card gives them (``registered_at`` left None):
    how ``pam models`` describes a model that detections used but nobody registered."""
    card = model.card
    return {
        "model_id": model.model_id,
        "name": card.name,
        "path": str(Path(model.path).resolve()),
        "classes_json": json.dumps(card.classes),
        "sample_rate": int(card.sample_rate),
        "window_s": float(card.window_s),
        "thresholds_json": json.dumps(card.thresholds, sort_keys=True),
        "metrics_json": json.dumps(card.metrics, sort_keys=True, default=str),
        "config_json": json.dumps(card.training.get("config", {}), sort_keys=True, default=str),
        "data_fingerprint": card.training.get("data_fingerprint"),
        "parent_id": card.parent_id,
        "registered_at": None,
    }


def used_model_ids(store: str | os.PathLike) -> set[str]:
    """The models the store's detection runs used (registered or not)."""
    runs = Store(store).read_runs()
    return {one for m in runs["model_id"].dropna() if isinstance(m, str) for one in m.split(";")}  # ';': several


def bundled_if(model_id: str) -> LoadedModel | None:
    """The bundled model when ``model_id`` is its id (detections made without --model), else None."""
    if model_id != model_id_of(bundled_model_path()):
        return None
    return load_checkpoint(None)


def read_models(store: str | os.PathLike) -> pd.DataFrame:
    """Every registered model, newest first (an empty frame with the columns when none)."""
    files = sorted(models_dir(store).glob("model-*.parquet"))
    if not files:
        return schemas.MODELS.empty_table().to_pandas()
    frames = [pq.read_table(f, schema=schemas.MODELS).to_pandas() for f in files]
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values("registered_at", ascending=False, kind="stable").reset_index(drop=True)


def headline(metrics_json: str | None) -> dict[str, float]:
    """Macro AP on validation and test from a registry row's metrics (NaN where absent)."""
    out = {"val_macro_ap": float("nan"), "test_macro_ap": float("nan")}
    try:
        metrics = json.loads(metrics_json or "{}")
    except ValueError:
        return out
    for split in ("val", "test"):
        value = (metrics.get(split) or {}).get("macro", {}).get("ap")
        if isinstance(value, (int, float)):
            out[f"{split}_macro_ap"] = float(value)
    return out
