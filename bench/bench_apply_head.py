"""``pam apply-head`` end to end: windows per second through the whole command (plan, read the
stored embeddings from the results table, score, build and commit the head's detections and
done rows), on a synthetic store of ``--windows`` random 1024-d float16 embeddings.

The reference, in the same run (after apply-head, so that its 2.4 GB of vectors are not held
while apply-head runs), is the head alone (``Head.scores``) on as many vectors in memory:
what reading and committing add on top. Target (issue 13): 1,000,000 windows/s.

    python bench/bench_apply_head.py                    # 400,000 windows (800 MB of embeddings)
    python bench/bench_apply_head.py --windows 1000000

With ``--store DIR`` the synthetic store is built once and kept; each later run applies a new
head (``--seed``) to it, so runs of two pam trees (``--code``) alternate on the same files:

    python bench/bench_apply_head.py --store /tmp/ah --seed 1 --code /tmp/old   # A
    python bench/bench_apply_head.py --store /tmp/ah --seed 2                   # B
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa


def code_tree() -> str:
    """The pam tree to measure: ``--code DIR`` (read before the imports), else this repository."""
    for i, a in enumerate(sys.argv):
        if a == "--code" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if a.startswith("--code="):
            return a.split("=", 1)[1]
    return str(Path(__file__).resolve().parents[1])


sys.path.insert(0, code_tree())

import pam  # noqa: E402
import pam.store.schemas as schemas  # noqa: E402
from pam.detect.detection_rows import EMBEDDING_ROWS, vectors_as_binary  # noqa: E402
from pam.store.store import Flush, Store  # noqa: E402
from pam.train.apply_head import apply_head  # noqa: E402
from pam.train.heads import Head, HeadCard  # noqa: E402

MODEL, SETTINGS, DIM, SR, HOP = "bench-embeddings", "bench-settings", 1024, 48000, 3.0


def build_store(root: Path, windows: int, per_recording: int, rng: np.random.Generator) -> np.ndarray:
    store = Store(root).ensure()
    recordings = windows // per_recording
    t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    manifest = pd.DataFrame({"recording_id": [f"rec{i:06d}" for i in range(recordings)],
                             "path": [f"/dump/S{i % 4}/{i:06d}.wav" for i in range(recordings)],
                             "site": [f"S{i % 4}" for i in range(recordings)], "device": "AM",
                             "start_time": [t0 + timedelta(hours=i) for i in range(recordings)],
                             "duration_s": per_recording * HOP, "status": "ok"})
    for col in schemas.MANIFEST.names:
        if col not in manifest:
            manifest[col] = None
    store.write_manifest(manifest[schemas.MANIFEST.names])
    store.write_run({"run_id": "bench-run", "flow": "detect", "status": "completed", "model_id": MODEL,
                     "settings_hash": SETTINGS, "config_json": '{"settings": {"window_s": 3.0}}'})
    vectors = rng.standard_normal((recordings * per_recording, DIM)).astype(np.float16)
    batch = max(1, 200_000 // per_recording)
    for seq, lo in enumerate(range(0, recordings, batch)):
        ids = range(lo, min(recordings, lo + batch))
        parts, done = [], []
        for i in ids:
            starts = np.arange(per_recording, dtype=np.int64) * int(HOP * SR)
            n = per_recording
            parts.append(pa.table({
                "recording_id": [f"rec{i:06d}"] * n, "start_sample": starts, "start_s": starts / SR,
                "start_time": pa.array([t0 + timedelta(hours=i, seconds=float(s) / SR) for s in starts],
                                       schemas.UTC_TS),
                "model_id": [MODEL] * n, "settings_hash": [SETTINGS] * n, "run_id": ["bench-run"] * n,
                "embedding": vectors_as_binary(vectors[i * n:(i + 1) * n]), "site": [f"S{i % 4}"] * n,
                "date": [(t0 + timedelta(hours=i)).date().isoformat()] * n}, schema=EMBEDDING_ROWS))
            done.append({"recording_id": f"rec{i:06d}", "model_id": MODEL, "settings_hash": SETTINGS,
                         "run_id": "bench-run", "site": f"S{i % 4}", "path": f"/dump/S{i % 4}/{i:06d}.wav",
                         "windows": n, "audio_s": n * HOP, "detections": 0, "committed_at": t0})
        det = pa.schema(list(schemas.DETECTIONS) + list(schemas.DETECTION_PARTITIONS)).empty_table()
        store.commit("bench-run", seq, Flush(det, pa.Table.from_pylist(done, schema=schemas.DONE),
                                             pa.concat_tables(parts)))
    return vectors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=400_000)
    ap.add_argument("--per-recording", type=int, default=1200, help="windows per recording (an hour at hop 3 s)")
    ap.add_argument("--store", type=Path, help="build the store here once and keep it (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0, help="the head's weights: a new seed is new work on a kept store")
    ap.add_argument("--code", help="the pam tree to import (default: this repository)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.store or Path(tmp)
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        if not (root / "store" / "results").exists():  # built once; its vectors are not kept in memory
            built = len(build_store(root / "store", args.windows, args.per_recording, rng))
            print(f"built a store of {built:,} windows in {time.perf_counter() - t0:.1f} s")
        w_rng = np.random.default_rng(1_000 + args.seed)
        w = w_rng.standard_normal((DIM, 1)).astype(np.float16).astype(np.float32) / 32
        head = Head(HeadCard(embedding_model_id=MODEL, embedding_dim=DIM, classes=("quail",),
                             thresholds={"quail": 0.99}), {"w1": w, "b1": np.array([-2.0], np.float32)})
        path = head.save(Path(tmp) / "head.npz")
        report = apply_head(Store(root / "store"), path)
        # the reference's vectors are drawn after apply-head, so that they are not in memory while it runs
        # (float32 draws: no float64 copy of them all)
        recordings = args.windows // args.per_recording
        vectors = rng.standard_normal((recordings * args.per_recording, DIM), dtype=np.float32).astype(np.float16)
        t0 = time.perf_counter()
        head.scores(vectors, MODEL)
        ref_s = time.perf_counter() - t0
        print(f"pam from {Path(pam.__file__).parent}")
        print(f"head alone on the vectors in memory: {len(vectors) / ref_s:,.0f} windows/s")
        print(f"pam apply-head end to end: {report.windows:,} windows, {report.detections:,} detections, "
              f"{report.wall_s:.2f} s: {report.windows_per_s:,.0f} windows/s (target 1,000,000)")


if __name__ == "__main__":
    main()
