"""What a detection run commits: each recording's hits (and, with ``detect.embeddings``, its
windows' embeddings) gathered batch by batch (``PendingDetections``) and, once its last window
is scored, its rows of the ``detections``, ``done`` and ``embeddings`` tables (``build_flush``;
columns in docs/store.md).
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa

import pam.store.schemas as schemas
from pam.store.store import Flush
from pam.detect.windows import scored_seconds, window_count

from pam.detect.settings import DetectSettings


class PendingDetections:
    """Detections of one recording, gathered batch by batch until its last window."""

    __slots__ = ("starts", "classes", "scores", "windows", "window_starts", "embeddings")

    def __init__(self) -> None:
        self.starts: list[np.ndarray] = []
        self.classes: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.windows = 0
        self.window_starts: list[np.ndarray] = []  # every window's start sample, when embeddings are kept
        self.embeddings: list[np.ndarray] = []  # float16 [windows, E], in the order of window_starts


def vectors_as_binary(vectors: np.ndarray) -> pa.Array:
    """Rows of a float16 matrix [n, E] as a binary array of 2E bytes each (the embedding column)."""
    data = np.ascontiguousarray(vectors, dtype=schemas.EMBEDDING_DTYPE)
    n, width = data.shape[0], data.shape[1] * 2 if data.ndim == 2 else 0
    offsets = np.arange(n + 1, dtype=np.int32) * width
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data.reshape(-1))])


def embedding_rows(r: pd.Series, p: PendingDetections, model_id: str, key: str, run_id: str) -> pa.Table | None:
    """The ``embeddings`` rows (with site and date) of one recording's windows, by start sample."""
    if not p.embeddings:
        return None
    starts = np.concatenate(p.window_starts).astype(np.int64)
    vectors = np.concatenate(p.embeddings)
    order = np.argsort(starts, kind="stable")
    starts, vectors = starts[order], vectors[order]
    n = len(starts)
    start_s = starts / int(r["sample_rate"])
    base = _utc_micros(r["start_time"])
    if base is not None:
        times = (base + np.round(start_s * 1e6).astype(np.int64)).astype("datetime64[us]")
        dates = pa.array(np.datetime_as_string(times.astype("datetime64[D]")).astype(object), pa.string())
        start_time = pa.array(times, pa.timestamp("us")).cast(schemas.UTC_TS)
    else:
        dates, start_time = pa.nulls(n, pa.string()), pa.nulls(n, schemas.UTC_TS)

    def const(value: object) -> pa.Array:
        return pa.array([value], pa.string()).take(pa.array(np.zeros(n, dtype=np.int32)))

    return pa.table({"recording_id": const(r["recording_id"]), "start_sample": starts, "start_s": start_s,
                     "start_time": start_time, "model_id": const(model_id), "settings_hash": const(key),
                     "run_id": const(run_id), "embedding": vectors_as_binary(vectors),
                     "site": const(optional_text(r["site"])), "date": dates}, schema=EMBEDDING_ROWS)


EMBEDDING_ROWS = pa.schema(list(schemas.EMBEDDINGS) + list(schemas.DETECTION_PARTITIONS))


def optional_text(value: object) -> str | None:
    """Missing strings come back from pandas as None, NaN or <NA>; Arrow wants None."""
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _utc_micros(t0: object) -> int | None:
    """A manifest start time as microseconds since the epoch (None when the file has no time)."""
    if t0 is None or pd.isna(t0):
        return None
    ts = pd.Timestamp(t0)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.value // 1000


def build_flush(todo: pd.DataFrame, ready: list[int], pending: dict[int, PendingDetections], classes: list[str],
                settings: DetectSettings, model_id: str, key: str, run_id: str) -> Flush:
    """The detections and done rows of the ``ready`` recordings (positions in ``todo``), one commit.

    Column arrays per recording, no Python loop per detection: a model of thousands of
    classes with low thresholds gives many rows per window.
    """
    now = datetime.now(timezone.utc)
    labels = np.array(classes, dtype=object)
    parts: list[dict[str, np.ndarray]] = []
    vectors: list[pa.Table] = []
    done_rows = []
    for i in ready:
        r = todo.iloc[i]
        p = pending.get(i) or PendingDetections()
        if settings.embeddings and (rows := embedding_rows(r, p, model_id, key, run_id)) is not None:
            vectors.append(rows)
        sr = int(r["sample_rate"])
        frames = int(r["frames"])
        win = round(settings.window_s * sr)
        n = sum(len(s) for s in p.starts)
        if n:
            starts = np.concatenate(p.starts).astype(np.int64)
            cls = np.concatenate(p.classes)
            scores = np.concatenate(p.scores).astype(np.float32)
            order = np.lexsort((cls, starts))
            starts, cls, scores = starts[order], cls[order], scores[order]
            start_s = starts / sr
            base = _utc_micros(r["start_time"])
            if base is not None:
                micros = base + np.round(start_s * 1e6).astype(np.int64)
                times = micros.astype("datetime64[us]")
                dates = np.datetime_as_string(times.astype("datetime64[D]")).astype(object)
            else:
                micros, dates = None, np.full(n, None, dtype=object)
            text = {"recording_id": r["recording_id"], "path": str(r["path"]), "device": optional_text(r["device"]),
                    "model_id": model_id, "settings_hash": key, "run_id": run_id, "site": optional_text(r["site"])}
            part = {name: np.full(n, value, dtype=object) for name, value in text.items()}
            part.update(start_sample=starts, start_s=start_s, end_s=np.minimum(starts + win, frames) / sr,
                        start_time=micros, label=labels[cls], score=scores, date=dates)
            parts.append(part)
        done_rows.append({
            "recording_id": r["recording_id"], "model_id": model_id, "settings_hash": key,
            "run_id": run_id, "site": optional_text(r["site"]), "path": str(r["path"]),
            "windows": window_count(frames, sr, settings.window_s, settings.hop_s),
            "audio_s": scored_seconds(frames, sr, settings.window_s, settings.hop_s), "detections": n, "committed_at": now,
        })
    schema = pa.schema(list(schemas.DETECTIONS) + [pa.field("site", pa.string()), pa.field("date", pa.string())])
    columns = []
    for f in schema:
        if f.name == "start_time":
            values = [pa.array(p["start_time"] if p["start_time"] is not None else [None] * len(p["score"]),
                               type=pa.int64()) for p in parts]
            columns.append(pa.chunked_array(values, type=pa.int64()).cast(f.type) if values
                           else pa.chunked_array([], type=f.type))
        else:
            values = [pa.array(p[f.name], type=f.type, from_pandas=True) for p in parts]
            columns.append(pa.chunked_array(values, type=f.type))
    detections = pa.Table.from_arrays(columns, schema=schema).combine_chunks()
    embeddings = pa.concat_tables(vectors) if vectors else None
    return Flush(detections, pa.Table.from_pylist(done_rows, schema=schemas.DONE), embeddings)
