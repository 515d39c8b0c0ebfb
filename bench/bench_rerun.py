"""How long a nightly rerun takes over a dump that is already processed.

Makes N short recordings in 10 site folders, runs scan + detection once (not timed), then
times the rerun that finds nothing new: scan (one stat per file, no file opened) and the
detection plan (one lookup in the done table), and the whole nightly run including the
summaries and the store's upkeep, twice: the first one also compacts what the first run wrote. Usage:

    python bench/bench_rerun.py [--files 10000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from models import every_window_model  # noqa: E402
from synth import noise, write_wav  # noqa: E402

from pam.config import DetectConfig, PamConfig  # noqa: E402
from pam.ops.pipeline import detect_stage, run_nightly, scan_stage  # noqa: E402
from pam.store.store import Store  # noqa: E402


def scan_and_detect(dump: Path, store: Store, conf: PamConfig):
    s = scan_stage(dump, store, conf)
    return detect_stage(store, [s.dump], conf, scan_problems=s.problems, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="pam-rerun-"))
    dump = tmp / "dump"
    template = write_wav(tmp / "template.wav", noise(0.5, 16000), 16000).read_bytes()
    for i in range(args.files):
        folder = dump / f"SITE{i % 10:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        start = datetime(2024, 5, 1, tzinfo=timezone.utc) + timedelta(minutes=10 * i)
        (folder / start.strftime("%Y%m%d_%H%M%S.WAV")).write_bytes(template)
    conf = PamConfig(model=str(every_window_model(tmp / "m.pt")),
                     detect=DetectConfig(num_workers=0, batch_size=1024))
    store = Store(tmp / "store")
    t = time.perf_counter()
    first = scan_and_detect(dump, store, conf)
    print(f"first run: {first.recordings_done} recordings in {time.perf_counter() - t:.1f} s (not the point)")
    t = time.perf_counter()
    s = scan_stage(dump, store, conf)
    scan_s = time.perf_counter() - t
    t = time.perf_counter()
    report = detect_stage(store, [s.dump], conf, scan_problems=s.problems, progress=False)
    detect_s = time.perf_counter() - t
    print(f"rerun over {args.files} processed files: scan {scan_s:.2f} s ({s.reopened} opened), "
          f"detect {detect_s:.2f} s ({report.recordings_done} new, {report.recordings_skipped} skipped)")
    t = time.perf_counter()
    run_nightly([str(dump)], store, conf, progress=False)
    print(f"whole nightly rerun (scan, detect, summaries): {time.perf_counter() - t:.2f} s")
    # the first nightly run also did the store's first upkeep (compaction of the first run's
    # files, a full count of the summaries); every later night finds those done
    t = time.perf_counter()
    run_nightly([str(dump)], store, conf, progress=False)
    print(f"the next night's rerun: {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
