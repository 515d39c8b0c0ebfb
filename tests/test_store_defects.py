"""Regression tests for the six store defects a code review found (issue 12; docs/store.md#defects).

Each test drives the store only through its public API and fault injection that works on any
storage layout (a failing Parquet write, a process that dies at a rename), so the tests stay
when the layout changes.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pam.store.schemas as schemas
from pam.store.store import Flush, Store, new_run_id

NOW = datetime(2024, 5, 1, 6, tzinfo=timezone.utc)
# delta-rs must not run in a forked child once the parent used it (its tokio runtime panics),
# so children start from a fresh fork server and import pam themselves (docs/store.md).
CHILD = mp.get_context("forkserver")


def flush_of(recs: dict[str, str], run: str, per_rec: int = 3, settings: str = "s1", score: float = 0.9) -> Flush:
    """A flush of recordings ``{recording_id: site}``, ``per_rec`` detections each."""
    det = {name: [] for name in schemas.DETECTIONS.names + ["site", "date"]}
    done = []
    for rec, site in recs.items():
        for k in range(per_rec):
            for name, value in (("recording_id", rec), ("path", f"/d/{rec}.wav"), ("device", None),
                                ("start_sample", k * 100), ("start_s", k * 1.0), ("end_s", k + 3.0),
                                ("start_time", NOW), ("label", "a"), ("score", score), ("model_id", "m1"),
                                ("settings_hash", settings), ("run_id", run), ("site", site),
                                ("date", "2024-05-01")):
                det[name].append(value)
        done.append({"recording_id": rec, "model_id": "m1", "settings_hash": settings, "run_id": run,
                     "site": site, "path": f"/d/{rec}.wav", "windows": per_rec, "audio_s": 6.0,
                     "detections": per_rec, "committed_at": NOW})
    schema = pa.schema(list(schemas.DETECTIONS) + list(schemas.DETECTION_PARTITIONS))
    return Flush(pa.table(det, schema=schema), pa.Table.from_pylist(done, schema=schemas.DONE))


def rows_per_recording(store: Store) -> dict[str, int]:
    det = store.read_detections(columns=["recording_id"])
    return det["recording_id"].value_counts().to_dict()


# -- 1. left-over parts of a failed commit counted after an in-process retry -----------------
def test_defect1_parts_of_a_failed_commit_are_never_counted(tmp_path, monkeypatch):
    store = Store(tmp_path).ensure()
    run = new_run_id()
    real_write = pq.write_table
    calls = {"n": 0}

    def second_write_fails(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_write(*args, **kwargs)

    with store.run_lock(what="test"):  # a run holds the lock: commits skip their clean-up
        monkeypatch.setattr(pq, "write_table", second_write_fails)
        with pytest.raises(OSError):
            store.commit(run, store.next_seq(run), flush_of({"A": "X", "B": "Y"}, run))
        monkeypatch.setattr(pq, "write_table", real_write)
        # the retry regroups the recordings: {B} first, then {A}
        store.commit(run, store.next_seq(run), flush_of({"B": "Y"}, run))
        store.commit(run, store.next_seq(run), flush_of({"A": "X"}, run))
    assert rows_per_recording(store) == {"A": 3, "B": 3}
    done = store.done_table()
    assert sorted(done["recording_id"]) == ["A", "B"]


# -- 2. replace within one run lost both copies -----------------------------------------------
def test_defect2_same_run_replace_keeps_the_new_rows(tmp_path):
    store = Store(tmp_path).ensure()
    run = new_run_id()
    store.commit(run, 0, flush_of({"A": "X"}, run, per_rec=3))
    store.commit(run, 1, flush_of({"A": "X"}, run, per_rec=2, score=0.5), replace=True)
    det = store.read_detections()
    assert len(det) == 2 and set(det["score"].round(3)) == {0.5}
    done = store.done_table()
    assert len(done) == 1 and int(done["detections"].iloc[0]) == 2


# -- 3. readers saw old and new rows together during --force ----------------------------------

def test_defect3_readers_never_see_old_and_new_rows_together(tmp_path, monkeypatch):
    store = Store(tmp_path).ensure()
    first, second = new_run_id(), new_run_id()
    store.commit(first, 0, flush_of({"A": "X", "B": "X"}, first, per_rec=3))
    seen: list[dict[str, int]] = []
    busy = {"in": False}

    def look() -> None:
        if busy["in"]:
            return
        busy["in"] = True
        try:
            seen.append(rows_per_recording(store))
        finally:
            busy["in"] = False

    def after(fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            look()
            return out
        return wrapped

    monkeypatch.setattr(os, "replace", after(os.replace))
    monkeypatch.setattr(os, "unlink", after(os.unlink))
    monkeypatch.setattr(pq, "write_table", after(pq.write_table))
    store.commit(second, 0, flush_of({"A": "X", "B": "X"}, second, per_rec=2), replace=True)
    monkeypatch.undo()
    look()
    assert seen, "no step of the commit was observed"
    for view in seen:  # every recording: its 3 old rows or its 2 new ones, never 5
        assert set(view.values()) <= {2, 3}, view
        assert len(set(view.values())) == 1, f"one commit, seen half applied: {view}"
    assert seen[-1] == {"A": 2, "B": 2}


# -- 4. a dead run stayed "running" -----------------------------------------------------------
def test_defect4_released_run_lock_has_no_holder_even_if_its_pid_lives(tmp_path):
    store = Store(tmp_path).ensure()
    with store.run_lock(what="a run that ends"):
        assert store.run_lock_holder_alive()
    # this process (the pid written into the lock file) is alive, but holds no lock any more
    assert not store.run_lock_holder_alive()


def _hold_lock_then_die(root: str, ready, go) -> None:
    with Store(root).run_lock(what="child run"):
        ready.set()
        go.wait(10)
    os._exit(0)


def test_defect4_run_lock_held_by_another_process_is_alive(tmp_path):
    store = Store(tmp_path).ensure()
    ready, go = CHILD.Event(), CHILD.Event()
    child = CHILD.Process(target=_hold_lock_then_die, args=(str(tmp_path), ready, go))
    child.start()
    try:
        assert ready.wait(10)
        assert store.run_lock_holder_alive()
    finally:
        go.set()
        child.join(10)
    assert not store.run_lock_holder_alive()


# -- 5. effort counted the unscored gaps of duty-cycled analysis ------------------------------
def test_defect5_audio_s_is_the_audio_actually_scored():
    from pam.detect.detection_rows import build_flush
    from pam.detect.settings import DetectSettings

    todo = pd.DataFrame([{"recording_id": "r", "path": "/d/r.wav", "device": None, "site": "X",
                          "sample_rate": 1000, "frames": 60_000, "start_time": NOW}])
    duty = DetectSettings(window_s=3.0, hop_s=5.0, channel=None, thresholds={"a": 0.5})
    done = build_flush(todo, [0], {}, ["a"], duty, "m1", duty.key(), "run").done
    assert done.column("windows")[0].as_py() == 12
    assert done.column("audio_s")[0].as_py() == pytest.approx(36.0)  # 60% of 60 s scored, not 100%
    overlap = DetectSettings(window_s=3.0, hop_s=1.5, channel=None, thresholds={"a": 0.5})
    done = build_flush(todo, [0], {}, ["a"], overlap, "m1", overlap.key(), "run").done
    assert done.column("audio_s")[0].as_py() == pytest.approx(60.0)  # overlapping windows: all of it, once


# -- 6. temporary files of summaries, report and occupancy CSVs survived recovery -------------
def _summarize_and_die_at_rename(root: str, what: str) -> None:
    """Child: summarize (and report), dying (kill -9 style) at the first rename into ``what``."""
    from pam.analysis.report import build_report
    from pam.analysis.summaries import summarize
    from pam.config import PamConfig

    real = os.replace

    def die_at_rename(src, dst, *args, **kwargs):
        if what in str(dst):
            os._exit(9)
        return real(src, dst, *args, **kwargs)

    os.replace = die_at_rename
    store = Store(root)
    result = summarize(store, PamConfig())
    build_report(store, store.reports_dir, PamConfig(), summary=result)
    os._exit(0)


@pytest.mark.parametrize("what", ["state.json", "report.html", ".csv"])
def test_defect6_recovery_removes_every_temporary_file(tmp_path, what):
    from pamstore import Rec, build

    store = build(tmp_path, [Rec("r1", "X", "2024-05-01T05:00", 60.0, detections=[(1.0, "a", 0.9, "m1")])])
    child = CHILD.Process(target=_summarize_and_die_at_rename, args=(str(tmp_path), what))
    child.start()
    child.join(60)
    assert child.exitcode == 9, f"the child did not reach a rename into {what}"
    assert list(tmp_path.rglob("*.tmp")), "the crash left no temporary file to recover"
    with store.run_lock(what="next run"):
        store.recover()
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".*tmp*"))
