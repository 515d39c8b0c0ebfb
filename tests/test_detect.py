import os
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from models import every_window_model
from pam.detect.checkpoint import load_checkpoint
from pam.config import DetectConfig, PamConfig
from pam.detect.detection import run_detection
from pam.io.manifest import scan
from pam.ops.pipeline import run_nightly
from pam.store.store import Store
from pam.detect.windows import window_grid
from synth import audiomoth_comment, noise, write_wav

UTC = timezone.utc
KEY = ["recording_id", "start_sample", "label"]


def table(store: Store) -> pd.DataFrame:
    det = store.read_detections()
    return det.drop(columns=["run_id"]).sort_values(KEY).reset_index(drop=True)


def same_tables(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert len(a) == len(b)
    pd.testing.assert_frame_equal(a.drop(columns=["score"]), b.drop(columns=["score"]))
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-4)


@pytest.fixture
def model_path(tmp_path):
    return every_window_model(tmp_path / "model.pt")


def make_dump(root, n_files=4, seconds=10.0, rate=16000):
    for i in range(n_files):
        start = datetime(2024, 5, 1, 23, 59, 50, tzinfo=UTC) + timedelta(minutes=i)
        write_wav(root / ("AM01" if i % 2 == 0 else "AM02") / start.strftime("%Y%m%d_%H%M%S.WAV"),
                  noise(seconds, rate, seed=i), rate)
    return root


def test_detection_rows_carry_exact_positions_and_times(tmp_path, model_path):
    dump = tmp_path / "dump"
    rate = 48000
    path = write_wav(dump / "PINE" / "20240501_235950.WAV", noise(13.0, rate), rate,
                     comment=audiomoth_comment("23:59:50 01/05/2024"))
    store = Store(tmp_path / "store")
    result = scan(dump, store)
    report = run_detection(store, result.rows, load_checkpoint(model_path), DetectConfig(num_workers=0),
                           progress=False)
    det = table(store)
    grid = window_grid(13 * rate, rate, 3.0, 1.5)
    assert det["start_sample"].tolist() == grid.starts.tolist()
    assert set(det["label"]) == {"a"}
    assert det["start_s"].tolist() == pytest.approx((grid.starts / rate).tolist())
    assert det["end_s"].iloc[0] == pytest.approx(3.0)
    assert det["end_s"].iloc[-1] == pytest.approx(13.0)  # padded last window ends at the file's end
    t0 = datetime(2024, 5, 1, 23, 59, 50, tzinfo=UTC)
    expected_times = [t0 + timedelta(seconds=s) for s in grid.starts / rate]
    assert [t.to_pydatetime() for t in det["start_time"]] == expected_times
    # windows after midnight UTC land in the next day's partition
    assert sorted(det["date"].unique()) == ["2024-05-01", "2024-05-02"]
    assert (det["date"] == "2024-05-02").sum() == sum(t.date().day == 2 for t in expected_times)
    assert set(det["site"]) == {"PINE"} and set(det["device"]) == {"24526B065D325963"}
    assert set(det["path"]) == {str(path)}
    assert set(det["model_id"]) == {report.model_id} and set(det["settings_hash"]) == {report.settings_hash}
    assert report.detections == len(grid) and report.recordings_done == 1


def test_bad_files_are_reported_and_good_files_all_detected(tmp_path, model_path):
    dump = make_dump(tmp_path / "dump", n_files=3)
    good = (dump / "AM01" / "20240501_235950.WAV").read_bytes()
    (dump / "AM01" / "20240502_010000.WAV").write_bytes(good[: len(good) // 3])  # truncated
    (dump / "AM01" / "20240502_020000.WAV").touch()  # zero bytes
    (dump / "AM02" / "20240502_030000.WAV").write_bytes(os.urandom(5000))  # not audio
    store = Store(tmp_path / "store")
    conf = PamConfig(model=str(model_path), detect=DetectConfig(num_workers=0))
    scans, report = run_nightly([str(dump)], store, conf, progress=False)
    reasons = {os.path.basename(p["path"]): p["reason"] for s in scans for p in s.problems}
    assert set(reasons) == {"20240502_010000.WAV", "20240502_020000.WAV", "20240502_030000.WAV"}
    assert "0 bytes" in reasons["20240502_020000.WAV"]
    assert "format not recognised" in reasons["20240502_030000.WAV"]
    assert "header declares" in reasons["20240502_010000.WAV"]
    # the run records them too
    runs = store.read_runs()
    assert runs.iloc[0]["status"] == "completed"
    assert "format not recognised" in runs.iloc[0]["failures_json"]
    det = table(store)
    for f in ["20240501_235950.WAV", "20240502_000050.WAV", "20240502_000150.WAV"]:
        n = len(det[det["path"].str.endswith(f)])
        assert n == len(window_grid(10 * 16000, 16000, 3.0, 1.5)), f
    # the truncated file's readable part (about 3.3 s) was analysed too
    assert len(det[det["path"].str.endswith("20240502_010000.WAV")]) >= 1


def test_rerun_adds_nothing_and_new_files_are_picked_up(tmp_path, model_path):
    dump = make_dump(tmp_path / "dump")
    store = Store(tmp_path / "store")
    conf = PamConfig(model=str(model_path), detect=DetectConfig(num_workers=0))
    run_nightly([str(dump)], store, conf, progress=False)
    first = table(store)
    _, again = run_nightly([str(dump)], store, conf, progress=False)
    assert again.recordings_done == 0 and again.recordings_skipped == 4
    same_tables(table(store), first)
    write_wav(dump / "AM01" / "20240502_050000.WAV", noise(5.0, 16000, seed=42), 16000)
    _, third = run_nightly([str(dump)], store, conf, progress=False)
    assert third.recordings_done == 1 and third.recordings_skipped == 4
    assert len(table(store)) == len(first) + len(window_grid(5 * 16000, 16000, 3.0, 1.5))


def test_force_redoes_without_doubling(tmp_path, model_path):
    dump = make_dump(tmp_path / "dump")
    store = Store(tmp_path / "store")
    conf = PamConfig(model=str(model_path), detect=DetectConfig(num_workers=0))
    _, first_report = run_nightly([str(dump)], store, conf, progress=False)
    first = table(store)
    _, forced = run_nightly([str(dump)], store, conf, force=True, progress=False)
    assert forced.recordings_done == 4
    same_tables(table(store), first)
    assert set(store.read_detections()["run_id"]) == {forced.run_id}


def test_changed_settings_are_new_work_that_replaces_the_old_rows(tmp_path, model_path):
    dump = make_dump(tmp_path / "dump", n_files=2)
    store = Store(tmp_path / "store")
    _, first = run_nightly([str(dump)], store, PamConfig(model=str(model_path), detect=DetectConfig(num_workers=0)),
                           progress=False)
    _, other = run_nightly([str(dump)], store, PamConfig(model=str(model_path), detect=DetectConfig(num_workers=0, hop_s=3.0)),
                           progress=False)
    assert other.recordings_done == 2
    assert set(store.read_detections()["settings_hash"]) == {other.settings_hash} != {first.settings_hash}
    assert store.done_keys(first.model_id, first.settings_hash) == set()


@pytest.mark.parametrize("batch_size, workers", [(1, 0), (7, 2), (1000, 1)])
def test_batching_and_workers_do_not_change_results(tmp_path, model_path, batch_size, workers):
    dump = make_dump(tmp_path / "dump", n_files=5, seconds=7.3)
    ref_store = Store(tmp_path / "ref")
    rows = scan(dump, ref_store).rows
    model = load_checkpoint(model_path)
    run_detection(ref_store, rows, model, DetectConfig(num_workers=0, batch_size=64), progress=False)
    store = Store(tmp_path / "store")
    rows = scan(dump, store).rows
    run_detection(store, rows, model, DetectConfig(num_workers=workers, batch_size=batch_size, flush_every=2),
                  progress=False)
    same_tables(table(store), table(ref_store))


def test_file_broken_after_scan_fails_alone(tmp_path, model_path):
    dump = make_dump(tmp_path / "dump", n_files=3)
    store = Store(tmp_path / "store")
    rows = scan(dump, store).rows
    victim = dump / "AM02" / "20240502_000050.WAV"
    victim.write_bytes(b"gone bad")
    report = run_detection(store, rows, load_checkpoint(model_path), DetectConfig(num_workers=0), progress=False)
    assert [f["path"] for f in report.failures] == [str(victim)]
    assert report.recordings_done == 2
    assert store.done_keys(report.model_id, report.settings_hash) == set(rows["recording_id"]) - set(
        rows[rows["path"] == str(victim)]["recording_id"])
