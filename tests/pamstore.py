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


# -- a broad model's season: hundreds of species ------------------------------------------------
# Labels as BirdNET writes them (Scientific name_Common Name), a few real ones first, and two
# plain labels of pam's own kind.
REAL_BIRDNET_LABELS = [
    "Colinus virginianus_Northern Bobwhite", "Strix varia_Barred Owl", "Bubo virginianus_Great Horned Owl",
    "Thryothorus ludovicianus_Carolina Wren", "Sturnella magna_Eastern Meadowlark",
    "Antrostomus vociferus_Eastern Whip-poor-will", "Antrostomus carolinensis_Chuck-will's-widow",
    "Cardinalis cardinalis_Northern Cardinal", "Poecile carolinensis_Carolina Chickadee",
    "Lithobates catesbeianus_American Bullfrog",
]
PLAIN_LABELS = ["bobwhite_covey", "barred_owl"]


def broad_labels(n: int = 200) -> list[str]:
    """``n`` labels: the real BirdNET ones, the plain ones, then made-up ``Avis nnn_Example Bird nnn``."""
    made_up = [f"Avis exemplaris{i:03d}_Example Bird {i:03d}" for i in range(n)]
    return (REAL_BIRDNET_LABELS + PLAIN_LABELS + made_up)[:n]


def broad_season(n_species: int = 200, sites: tuple[str, ...] = ("A", "B", "C", "D"), days: int = 5,
                 seed: int = 0) -> list[Rec]:
    """One 1-hour recording per site and UTC day from 2024-05-01T05:00, scored by model ``bn``.

    Species k (in ``broad_labels`` order) calls on a site-day with chance 0.9 / (1 + k / 40) and
    then ``1 + 40 // (k + 1)`` times, a few seconds apart: a few common species and a long tail.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = broad_labels(n_species)
    recs = []
    for site in sites:
        for day in range(days):
            dets = []
            for k, label in enumerate(labels):
                if rng.random() < 0.9 / (1 + k / 40):
                    n = 1 + 40 // (k + 1)
                    dets += [(float(k * 15 + 0.5 * j), label, float(np.round(rng.uniform(0.3, 1.0), 3)), "bn")
                             for j in range(n)]
            recs.append(Rec(f"{site}-{day}", site, f"2024-05-{day + 1:02d}T05:00", 3600, scored_by=("bn",),
                            detections=dets))
    return recs


def scan_and_detect(dump, store, conf):
    """Scan one dump and detect it, under the run lock as a nightly run holds it; the detect report."""
    from pam.ops.pipeline import detect_stage, scan_stage

    with store.run_lock(0, what="test run"):
        s = scan_stage(dump, store, conf)
        return detect_stage(store, [s.dump], conf, scan_problems=s.problems, progress=False)
