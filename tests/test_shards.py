"""Scale-out and faults inside a run: shards, per-recording retries, CUDA out-of-memory,
a shard that dies, and the failure report."""

from __future__ import annotations

import errno
import os
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import torch

import pam.detect.dataset
import pam.detect.shards
from models import every_window_model
from pam.detect.checkpoint import load_checkpoint
from pam.config import DetectConfig, PamConfig, RetriesConfig, RunnerConfig, ScanConfig
from pam.detect.detection import run_detection
from pam.store.failures import read_failures, render_markdown
from pam.io.manifest import scan
from pam.ops.pipeline import detect_stage, scan_stage
from pam.detect.shards import split
from pam.store.store import PART_NAME, Store
from synth import noise, write_wav

KEY = ["recording_id", "start_sample", "label"]


def make_dump(root, n=8, rate=16000):
    """``n`` files of 2-5 s at sites S0-S2, some after midnight UTC."""
    for i in range(n):
        start = datetime(2024, 5, 1, 23, 58, tzinfo=timezone.utc) + timedelta(minutes=i)
        write_wav(root / f"S{i % 3}" / start.strftime("%Y%m%d_%H%M%S.WAV"), noise(2.0 + i % 4, rate, seed=i), rate)
    return root


def table(store: Store) -> pd.DataFrame:
    return store.read_detections().drop(columns=["run_id"]).sort_values(KEY).reset_index(drop=True)


def same_tables(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert len(a) == len(b) > 0
    pd.testing.assert_frame_equal(a.drop(columns=["score"]), b.drop(columns=["score"]))
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-4)


def scan_and_detect(dump, store: Store, conf: PamConfig):
    s = scan_stage(dump, store, conf)
    return detect_stage(store, [s.dump], conf, scan_problems=s.problems, progress=False)


@pytest.fixture
def conf(tmp_path):
    model = every_window_model(tmp_path / "m.pt")
    return PamConfig(model=str(model), detect=DetectConfig(num_workers=0, batch_size=4, flush_every=2),
                     retries=RetriesConfig(count=2, delay_s=0))


def test_split_balances_audio_and_keeps_every_recording_once():
    todo = pd.DataFrame({"recording_id": [f"r{i}" for i in range(7)],
                         "path": [f"/d/{i}.wav" for i in range(7)],
                         "duration_s": [100.0, 90.0, 50.0, 40.0, 10.0, 5.0, 5.0]})
    shards = split(todo, 3)
    assert sorted(r for s in shards for r in s) == sorted(todo["recording_id"])
    load = [todo.set_index("recording_id").loc[s, "duration_s"].sum() for s in shards]
    assert max(load) - min(load) <= 40  # greedy longest-first: 100 | 90+10 | 50+40+5+5
    assert split(todo, 3) == shards  # deterministic
    assert len(split(todo, 50)) == 7 and split(todo.iloc[0:0], 4) == []


def test_sharded_run_equals_single_process_run(tmp_path, conf):
    dump = make_dump(tmp_path / "dump")
    single = Store(tmp_path / "single")
    scan_and_detect(dump, single, conf)
    sharded = Store(tmp_path / "sharded")
    report = scan_and_detect(dump, sharded, conf.model_copy(update={"runner": RunnerConfig(shards=3)}))
    same_tables(table(sharded), table(single))
    assert report.recordings_done == 8 and report.recordings_total == 8
    runs = sharded.read_runs()
    assert len(runs) == 1 and runs.iloc[0]["status"] == "completed" and runs.iloc[0]["recordings_done"] == 8
    # Each shard committed under the run's id in its own block of commit numbers.
    seqs = {int(PART_NAME.match(p.name)["seq"]) // 100_000 for p in sharded.detection_files()}
    assert seqs == {0, 1, 2}
    again = scan_and_detect(dump, sharded, conf.model_copy(update={"runner": RunnerConfig(shards=3)}))
    assert again.recordings_done == 0 and again.recordings_skipped == 8


def flaky_reads(monkeypatch, victim: str, failures: int, error: Exception):
    """read_span raises ``error`` on ``victim`` the first ``failures`` times it is asked."""
    real = pam.detect.dataset.read_span
    calls = {"n": 0}

    def read_span(snd, start, frames, channel=None):
        if snd.name == victim and calls["n"] < failures:
            calls["n"] += 1
            raise error
        return real(snd, start, frames, channel)

    monkeypatch.setattr(pam.detect.dataset, "read_span", read_span)
    return calls


def test_transient_error_is_retried_and_the_recording_completes(tmp_path, conf, monkeypatch):
    dump = make_dump(tmp_path / "dump", n=4)
    ref = Store(tmp_path / "ref")
    scan_and_detect(dump, ref, conf)
    victim = str(sorted(dump.rglob("*.WAV"))[1])
    calls = flaky_reads(monkeypatch, victim, 2, OSError(errno.EIO, "Input/output error"))
    store = Store(tmp_path / "store")
    report = scan_and_detect(dump, store, conf)  # retries.count = 2: the third attempt works
    assert calls["n"] == 2 and report.failures == [] and report.recordings_done == 4
    same_tables(table(store), table(ref))


def test_recording_that_keeps_failing_is_reported_with_reason_and_attempts(tmp_path, conf, monkeypatch):
    dump = make_dump(tmp_path / "dump", n=4)
    victim = sorted(dump.rglob("*.WAV"))[1]
    calls = flaky_reads(monkeypatch, str(victim), 100, OSError(errno.EIO, "Input/output error"))
    store = Store(tmp_path / "store")
    report = scan_and_detect(dump, store, conf)
    assert calls["n"] == 3  # 1 + retries.count
    [failure] = [f for f in report.failures if f["stage"] == "detect"]
    assert failure["path"] == str(victim) and failure["attempts"] == 3 and failure["site"] == victim.parent.name
    assert "Input/output error" in failure["reason"] and "after 3 attempts" in failure["reason"]
    assert report.recordings_done == 3 and report.recordings_failed == 1
    row = store.read_runs().iloc[0]
    assert row["recordings_failed"] == 1 and "Input/output error" in row["failures_json"]
    # the next run tries it again (and succeeds once the disk behaves)
    monkeypatch.undo()
    again = scan_and_detect(dump, store, conf)
    assert again.recordings_done == 1 and again.failures == []


def test_a_file_that_is_bad_is_not_retried(tmp_path, conf, monkeypatch):
    dump = make_dump(tmp_path / "dump", n=2)
    victim = str(sorted(dump.rglob("*.WAV"))[0])
    calls = flaky_reads(monkeypatch, victim, 100, ValueError("corrupt block"))
    report = scan_and_detect(dump, Store(tmp_path / "store"), conf)
    assert calls["n"] == 1
    assert [f["attempts"] for f in report.failures] == [1] and "corrupt block" in report.failures[0]["reason"]


def test_cuda_out_of_memory_halves_the_batch_and_goes_on(tmp_path, conf):
    dump = make_dump(tmp_path / "dump", n=5)
    rows = scan(dump, Store(tmp_path / "ref")).rows
    model = load_checkpoint(conf.model)
    detect = DetectConfig(num_workers=0, batch_size=16)
    run_detection(Store(tmp_path / "ref"), rows, model, detect, progress=False)

    sizes: list[int] = []
    real_forward = model.forward  # the model contract's forward (pam.detect.contract)

    def forward(x):  # a device that holds at most 5 windows
        sizes.append(x.shape[0])
        if x.shape[0] > 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real_forward(x)

    model.forward = forward
    store = Store(tmp_path / "store")
    report = run_detection(store, rows, model, detect, progress=False)
    assert report.recordings_done == 5 and report.failures == []
    same_tables(table(store), table(Store(tmp_path / "ref")))
    first_ok = next(i for i, n in enumerate(sizes) if n <= 5)
    chain = sizes[:first_ok + 1]
    assert len(chain) >= 2 and all(b == a // 2 for a, b in zip(chain, chain[1:]))  # halved until it fits ...
    assert len(sizes) > first_ok + 1 and max(sizes[first_ok:]) <= chain[-1]  # ... and stays so for the run


def test_a_shard_that_dies_is_reported_and_the_others_commit(tmp_path, conf, monkeypatch):
    dump = make_dump(tmp_path / "dump", n=6)
    real = pam.detect.shards.run_shard

    def run_shard(store_root, dumps, ids, config, run_id, index, **kw):
        if index == 1:
            raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed")
        return real(store_root, dumps, ids, config, run_id, index, **kw)

    monkeypatch.setattr(pam.detect.shards, "run_shard", run_shard)
    store = Store(tmp_path / "store")
    sharded = conf.model_copy(update={"runner": RunnerConfig(shards=3)})
    report = scan_and_detect(dump, store, sharded)
    [failure] = [f for f in report.failures if f["stage"] == "shard"]
    assert "killed by signal" in failure["reason"] and failure["recordings"] == 2
    assert failure["path"] == "(shard 1: 2 recordings left)" and "recording_ids" not in failure
    assert report.recordings_done == 4 and report.recordings_failed == 2
    assert store.read_runs().iloc[0]["status"] == "failed"
    monkeypatch.undo()
    again = scan_and_detect(dump, store, sharded)  # the next run does the rest
    assert again.recordings_done == 2 and again.recordings_skipped == 4


def test_failure_report_lists_failed_and_skipped_files_per_site(tmp_path, conf, monkeypatch):
    dump = make_dump(tmp_path / "dump", n=3)
    (dump / "S0" / "20240503_000000.WAV").touch()
    (dump / "S1" / "20240503_000000.WAV").write_bytes(b"not audio at all" * 100)
    good = sorted((dump / "S2").glob("*.WAV"))[0].read_bytes()
    (dump / "S2" / "20240503_010000.WAV").write_bytes(good[: len(good) // 2])
    copying = write_wav(dump / "S2" / "20240503_020000.WAV", noise(1.0, 16000), 16000)
    old = datetime(2024, 5, 3, tzinfo=timezone.utc).timestamp()
    for p in dump.rglob("*.WAV"):
        if p != copying:
            os.utime(p, (old, old))
    victim = sorted((dump / "S1").glob("2024*.WAV"))[0]
    flaky_reads(monkeypatch, str(victim), 100, OSError(errno.EIO, "Input/output error"))
    store = Store(tmp_path / "store")
    report = scan_and_detect(dump, store, conf.model_copy(update={"scan": ScanConfig(min_age_s=3600)}))

    assert report.failure_report == str(store.reports_dir / f"failures-{report.run_id}.md")
    md = (store.reports_dir / f"failures-{report.run_id}.md").read_text()
    assert md.startswith(f"# pam run {report.run_id}: 1 failed, 3 skipped, 1 read in part")
    assert "## S0 (1 skipped)" in md and "## S1 (1 failed, 1 skipped)" in md
    assert "## S2 (1 skipped, 1 partial)" in md
    assert "file is empty (0 bytes)" in md and "format not recognised" in md and "still being copied" in md
    assert "Input/output error (after 3 attempts)" in md and str(victim) in md
    rows = read_failures(store).to_pandas().set_index("path")
    assert rows.loc[str(victim), "outcome"] == "failed" and rows.loc[str(victim), "attempts"] == 3
    assert rows.loc[str(copying), "status"] == "pending" and rows.loc[str(copying), "site"] == "S2"
    assert rows.loc[str(dump / "S2" / "20240503_010000.WAV"), "outcome"] == "partial"
    assert set(rows["run_id"]) == {report.run_id}


def test_a_clean_run_writes_no_report_but_says_so():
    assert render_markdown("r1", []).startswith("# pam run r1: no failed or skipped files")
