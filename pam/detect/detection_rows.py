"""What a detection run commits: each recording's hits gathered batch by batch
(``PendingDetections``) and, once its last window is scored, its rows of the ``detections``
and ``done`` tables (``build_flush``; columns in docs/store.md).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa

import pam.store.schemas as schemas
from pam.store.store import Flush
from pam.detect.windows import scored_seconds, window_count

from pam.detect.settings import DetectSettings


class PendingDetections:
    """Detections of one recording, gathered batch by batch until its last window."""

    __slots__ = ("starts", "classes", "scores", "windows")

    def __init__(self) -> None:
        self.starts: list[np.ndarray] = []
        self.classes: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.windows = 0


def optional_text(value: object) -> str | None:
    """Missing strings come back from pandas as None, NaN or <NA>; Arrow wants None."""
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def build_flush(todo: pd.DataFrame, ready: list[int], pending: dict[int, PendingDetections], classes: list[str],
                settings: DetectSettings, model_id: str, key: str, run_id: str) -> Flush:
    """The detections and done rows of the ``ready`` recordings (positions in ``todo``), one commit."""
    now = datetime.now(timezone.utc)
    det_cols: dict[str, list] = {name: [] for name in schemas.DETECTIONS.names + ["site", "date"]}
    done_rows = []
    labels = np.array(classes, dtype=object)
    for i in ready:
        r = todo.iloc[i]
        p = pending.get(i) or PendingDetections()
        sr = int(r["sample_rate"])
        frames = int(r["frames"])
        win = round(settings.window_s * sr)
        n = sum(len(s) for s in p.starts)
        if n:
            starts = np.concatenate(p.starts)
            cls = np.concatenate(p.classes)
            scores = np.concatenate(p.scores)
            order = np.lexsort((cls, starts))
            starts, cls, scores = starts[order], cls[order], scores[order]
            start_s = starts / sr
            end_s = np.minimum(starts + win, frames) / sr
            t0 = r["start_time"]
            if t0 is not None and not pd.isna(t0):
                base = pd.Timestamp(t0).to_pydatetime()
                times = [base + timedelta(seconds=float(s)) for s in start_s]
                dates = [t.strftime("%Y-%m-%d") for t in times]
            else:
                times = [None] * n
                dates = [None] * n
            det_cols["recording_id"] += [r["recording_id"]] * n
            det_cols["path"] += [str(r["path"])] * n
            det_cols["device"] += [optional_text(r["device"])] * n
            det_cols["start_sample"] += starts.tolist()
            det_cols["start_s"] += start_s.tolist()
            det_cols["end_s"] += end_s.tolist()
            det_cols["start_time"] += times
            det_cols["label"] += labels[cls].tolist()
            det_cols["score"] += scores.astype(np.float32).tolist()
            det_cols["model_id"] += [model_id] * n
            det_cols["settings_hash"] += [key] * n
            det_cols["run_id"] += [run_id] * n
            det_cols["site"] += [optional_text(r["site"])] * n
            det_cols["date"] += dates
        done_rows.append({
            "recording_id": r["recording_id"], "model_id": model_id, "settings_hash": key,
            "run_id": run_id, "site": optional_text(r["site"]), "path": str(r["path"]),
            "windows": window_count(frames, sr, settings.window_s, settings.hop_s),
            "audio_s": scored_seconds(frames, sr, settings.window_s, settings.hop_s), "detections": n, "committed_at": now,
        })
    schema = pa.schema(list(schemas.DETECTIONS) + [pa.field("site", pa.string()), pa.field("date", pa.string())])
    return Flush(pa.table(det_cols, schema=schema), pa.Table.from_pylist(done_rows, schema=schemas.DONE))
