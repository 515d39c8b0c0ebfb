"""Fuzz: hundreds of malformed recordings through scan and detection.

Seeded truncations, byte flips and lying header fields of valid WAV and FLAC files
(tests/malformed.py). Nothing may escape; every file ends up processed (a done row) or
reported with a one-line reason; the valid files' detections are exactly those of a run
on the valid files alone.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd

from malformed import write_malformed, write_valid
from models import every_window_model
from pam.config import DetectConfig, PamConfig, RetriesConfig
from pam.store.failures import read_failures
from pam.ops.pipeline import detect_stage, scan_stage
from pam.store.store import Store

STATUSES = {"ok", "truncated", "empty", "not_audio", "unreadable"}


def run(dump, store: Store, conf: PamConfig):
    s = scan_stage(dump, store, conf)
    assert s.error is None
    return s, detect_stage(store, [s.dump], conf, scan_problems=s.problems, progress=False)


def one_line(text) -> bool:
    return isinstance(text, str) and text.strip() != "" and "\n" not in text


def test_malformed_files_are_processed_or_reported_and_valid_results_unchanged(tmp_path):
    dump = tmp_path / "dump"
    valid = write_valid(dump)
    malformed = write_malformed(dump, valid, 240, seed=11)
    (dump / "BAD0" / "20240601_000000.WAV").touch()
    (dump / "BAD1" / "20240601_000000.flac").write_bytes(os.urandom(3000))
    (dump / "BAD2" / "20240601_000000.wav").write_text("RIFF but not really " * 20)
    model = every_window_model(tmp_path / "m.pt")
    conf = PamConfig(model=str(model), detect=DetectConfig(num_workers=0, batch_size=64),
                     retries=RetriesConfig(count=1, delay_s=0))
    store = Store(tmp_path / "store")
    _scan, report = run(dump, store, conf)  # nothing escapes

    manifest = store.read_manifest().set_index("path")
    files = [p for p in dump.rglob("*") if p.is_file()]
    assert len(files) == len(valid) + 243 and len(manifest) == len(files)
    done = set(store.done_table()["recording_id"])
    failed = {f["path"]: f for f in report.failures if f["stage"] == "detect"}
    assert not [f for f in report.failures if f["stage"] == "shard"]
    processed = skipped = 0
    for path in files:
        row = manifest.loc[str(path)]
        assert row["status"] in STATUSES, (path, malformed.get(path))
        if row["status"] == "ok":
            assert pd.isna(row["reason"]) or row["reason"] is None
        else:
            assert one_line(row["reason"]), (path, malformed.get(path), row["reason"])
        if row["status"] in ("ok", "truncated"):
            assert row["recording_id"] in done or one_line(failed.get(str(path), {}).get("reason")), \
                (path, malformed.get(path))
            processed += row["recording_id"] in done
        else:
            skipped += 1
    # The corpus really is mixed: many files analysed (flipped data, truncations), many refused.
    assert processed > 60 and skipped > 60 and len(failed) > 5

    # The failure report lists every file that was not analysed whole, with its reason.
    rows = read_failures(store).to_pandas()
    not_ok = {str(p) for p in files if manifest.loc[str(p), "status"] != "ok"}
    assert not_ok | set(failed) == set(rows["path"])
    assert rows["reason"].map(one_line).all()

    # Valid files: the same detections as a run that never saw a malformed file.
    ref_dump = tmp_path / "valid-only"
    for path in valid:  # copies: a rewritten float WAV differs (libsndfile stamps its PEAK chunk)
        (ref_dump / path.relative_to(dump)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, ref_dump / path.relative_to(dump))
    ref = Store(tmp_path / "ref")
    run(ref_dump, ref, conf)
    cols = ["recording_id", "start_sample", "label", "site", "date"]
    ids = set(ref.done_table()["recording_id"])
    assert len(ids) == len(valid)
    got = store.read_detections()
    got = got[got["recording_id"].isin(ids)].sort_values(cols).reset_index(drop=True)
    want = ref.read_detections().sort_values(cols).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[cols], want[cols])
    np.testing.assert_allclose(got["score"], want["score"], atol=1e-6)
