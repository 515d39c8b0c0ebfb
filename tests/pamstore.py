"""Build small stores with known recordings, effort and detections, through the store's own API.

Recordings go into the manifest with ``Store.write_manifest``; their scoring (done rows) and
detections go in through ``Store.commit``, exactly as a detection run would write them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa

import pam.store.schemas as schemas
from pam.store.store import Flush, Store, new_run_id

NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)


@dataclass
class Rec:
    """One recording: where, when (UTC), how long; which models scored it; what they found."""

    rid: str
    site: str
    start: str  # ISO UTC, e.g. "2024-05-01T05:00"
    seconds: float
    status: str = "ok"
    scored_by: tuple[str, ...] = ("m1",)
    # (seconds into the file, label, score, model id)
    detections: list[tuple[float, str, float, str]] = field(default_factory=list)
    path: str | None = None
    sample_rate: int = 8000

    @property
    def start_time(self) -> datetime:
        return datetime.fromisoformat(self.start).replace(tzinfo=timezone.utc)

    @property
    def file(self) -> str:
        return self.path or f"/dumps/{self.site}/{self.rid}.wav"


def manifest_frame(recs: list[Rec]) -> pd.DataFrame:
    rows = []
    for r in recs:
        rows.append({
            "recording_id": r.rid, "path": r.file, "dump": "/dumps", "size": 1000, "mtime": NOW, "site": r.site,
            "device": None, "recorder": "audiomoth", "start_time": r.start_time, "time_source": "filename",
            "sample_rate": r.sample_rate, "channels": 1, "frames": int(r.seconds * r.sample_rate),
            "duration_s": r.seconds, "format": "WAV", "status": r.status, "reason": None, "scanned_at": NOW,
        })
    return pa.Table.from_pylist(rows, schema=schemas.MANIFEST).to_pandas()


def flush_for(recs: list[Rec], model: str, run: str, window_s: float = 3.0) -> Flush:
    det = {name: [] for name in schemas.DETECTIONS.names + ["site", "date"]}
    done = []
    for r in recs:
        if model not in r.scored_by:
            continue
        mine = sorted(d for d in r.detections if d[3] == model)
        for offset, label, score, _m in mine:
            when = r.start_time + timedelta(seconds=offset)
            det["recording_id"].append(r.rid)
            det["path"].append(r.file)
            det["device"].append(None)
            det["start_sample"].append(int(round(offset * r.sample_rate)))
            det["start_s"].append(float(offset))
            det["end_s"].append(min(float(offset) + window_s, r.seconds))
            det["start_time"].append(when)
            det["label"].append(label)
            det["score"].append(score)
            det["model_id"].append(model)
            det["settings_hash"].append("s1")
            det["run_id"].append(run)
            det["site"].append(r.site)
            det["date"].append(when.strftime("%Y-%m-%d"))
        done.append({"recording_id": r.rid, "model_id": model, "settings_hash": "s1", "run_id": run,
                     "site": r.site, "path": r.file, "windows": 1, "audio_s": r.seconds,
                     "detections": len(mine), "committed_at": NOW})
    schema = pa.schema(list(schemas.DETECTIONS) + list(schemas.DETECTION_PARTITIONS))
    return Flush(pa.table(det, schema=schema), pa.Table.from_pylist(done, schema=schemas.DONE))


def commit(store: Store, recs: list[Rec]) -> None:
    """Commit the scoring of ``recs`` (one flush per model) as a detection run would."""
    models = sorted({m for r in recs for m in r.scored_by})
    for model in models:
        run = new_run_id()
        flush = flush_for(recs, model, run)
        if flush.done.num_rows:
            store.commit(run, 0, flush)


def build(root: Path, recs: list[Rec], manifest_recs: list[Rec] | None = None) -> Store:
    store = Store(root).ensure()
    store.write_manifest(manifest_frame(manifest_recs if manifest_recs is not None else recs))
    commit(store, recs)
    return store
