"""A model's list of training clips in a small file beside its checkpoint: ``<stem>.clips.json``.

A model id is a hash of the checkpoint's bytes (``pam.detect.checkpoint.model_id_of``), so
writing the list onto the card of a model already in use would give it a new id, and every
store would score its recordings again and keep a second copy of the detections. A model
trained before cards listed their clips (the bundled ``bobwhite-v2`` among them) gets the
list in this sidecar instead, which names the model id it describes: a sidecar naming another
id (the checkpoint was replaced) is refused.

The file is JSON, one clip per line, with the same columns as ``card.training['clips']``::

    {
     "format": "pam-clip-list",
     "version": 1,
     "model_id": "f8cb50bfb2e8dddf",
     "model": "bobwhite-v2",
     "source": "...how the list was made...",
     "columns": ["audio", "start_s", "end_s", "split"],
     "clips": [
      ["802e5c73ae88a40b4ed7", 0.0, 4.0, "train"],
      ...
     ]
    }
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from pam.detect.checkpoint import ModelError

FORMAT = "pam-clip-list"
VERSION = 1
SUFFIX = ".clips.json"
COLUMNS = ("audio", "start_s", "end_s", "split")


def sidecar_path(checkpoint: str | os.PathLike) -> Path:
    """Where a checkpoint's clip list lies: ``models/bobwhite-v2.pt`` -> ``models/bobwhite-v2.clips.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + SUFFIX)


def write_sidecar(checkpoint: str | os.PathLike, model_id: str, model_name: str, record: dict[str, list],
                  source: str) -> Path:
    """Write (atomically) the clip list ``record`` (columns as on a card) of the model ``model_id``."""
    rows = list(zip(*(record[c] for c in COLUMNS)))
    header = {"format": FORMAT, "version": VERSION, "model_id": model_id, "model": model_name, "source": source,
              "columns": list(COLUMNS)}
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in header.items()] + [' "clips": [']
    lines += [f"  {json.dumps(list(row))}{',' if i < len(rows) - 1 else ''}" for i, row in enumerate(rows)]
    lines += [" ]", "}"]
    path = sidecar_path(checkpoint)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_sidecar(checkpoint: str | os.PathLike, model_id: str) -> dict[str, list] | None:
    """The clip list beside ``checkpoint`` (columns as on a card), or None when there is no sidecar.

    Raises ModelError for a sidecar that cannot be read or that describes another model id.
    """
    path = sidecar_path(checkpoint)
    if not path.is_file():
        return None
    fix = f"remove it, or write it again with python -m pam.train.backfill {checkpoint}"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable clip list ({type(exc).__name__}); {fix}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelError(f"{path}: not a pam clip list (format tag missing); {fix}")
    if not isinstance(data.get("version"), int) or data["version"] > VERSION:
        raise ModelError(f"{path}: clip list version {data.get('version')!r} is not one this pam reads ({VERSION}); "
                         "upgrade pam")
    if data.get("model_id") != model_id:
        raise ModelError(f"{path}: lists the clips of model {data.get('model_id')}, not of {Path(checkpoint).name} "
                         f"(model {model_id}); {fix}")
    columns, rows = data.get("columns"), data.get("clips")
    if not isinstance(columns, list) or set(COLUMNS) - set(columns) or not isinstance(rows, list) \
            or any(not isinstance(r, list) or len(r) != len(columns) for r in rows):
        raise ModelError(f"{path}: the clip list should have columns {list(COLUMNS)} and one row per clip; {fix}")
    return {c: [r[columns.index(c)] for r in rows] for c in COLUMNS}
