import re

import pytest
from typer.testing import CliRunner

from models import every_window_model
from pam.cli.main import app
from pam.store.query import run_sql
from pam.store.store import Store
from synth import noise, write_wav

runner = CliRunner()


@pytest.fixture
def dump(tmp_path):
    write_wav(tmp_path / "dump" / "AM01" / "20240501_020000.WAV", noise(6.0, 16000), 16000)
    (tmp_path / "dump" / "AM01" / "20240501_030000.WAV").touch()
    return tmp_path / "dump"


def test_detect_prints_detections_and_problems(tmp_path, dump):
    model = every_window_model(tmp_path / "m.pt")
    store = tmp_path / "store"
    res = runner.invoke(app, ["detect", str(dump), "--store", str(store), "--model", str(model),
                              "--no-prefect", "--workers", "0"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "file is empty (0 bytes)" in res.output
    assert "1 recordings scored" in res.output
    # three overlapping windows (0, 1.5, 3 s) of one call: one event
    assert "3 detections in 1 event in these dumps (windows overlap: 3 s every 1.5 s)" in res.output
    assert "AM01  20240501_020000.WAV" in res.output
    assert re.search(r"2024-05-01 02:00:00\s+0\.0-6\.0 s\s+a\s+\d\.\d{3}\s+3 windows", res.output)
    assert len(Store(store).read_detections()) == 3
    again = runner.invoke(app, ["detect", str(dump), "--store", str(store), "--model", str(model), "--no-prefect"])
    assert "0 recordings scored" in again.output and "1 already done" in again.output


def test_detect_prints_one_event_per_window_when_windows_leave_gaps(tmp_path, dump):
    model = every_window_model(tmp_path / "m.pt")
    conf = tmp_path / "hop.yaml"
    conf.write_text("detect:\n  hop_s: 4.5\n")  # windows 0-3 and 4.5-6 (capped at the file's end)
    res = runner.invoke(app, ["detect", str(dump), "--store", str(tmp_path / "s"), "--model", str(model),
                              "--config", str(conf), "--no-prefect", "--workers", "0"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "2 detections in 2 events in these dumps (windows do not touch: 3 s every 4.5 s)" in res.output
    assert re.search(r"2024-05-01 02:00:00\.0\s+0\.0-3\.0 s\s+a\s+\d\.\d{3}\s+1 window\n", res.output)
    assert re.search(r"2024-05-01 02:00:04\.5\s+4\.5-6\.0 s\s+a\s+\d\.\d{3}\s+1 window\n", res.output)


def test_scan_lists_problems(tmp_path, dump):
    res = runner.invoke(app, ["scan", str(dump), "--store", str(tmp_path / "s")])
    assert res.exit_code == 0
    assert "2 files, 1 usable" in res.output and "0 bytes" in res.output


def test_broken_config_is_one_line_per_problem(tmp_path, dump):
    bad = tmp_path / "bad.yaml"
    bad.write_text("detect:\n  batch_size: 0\n")
    res = runner.invoke(app, ["detect", str(dump), "--store", str(tmp_path / "s"), "--config", str(bad)])
    assert res.exit_code == 2
    assert "detect.batch_size" in res.output and "greater than or equal to 1" in res.output


def test_bad_model_is_a_clear_error(tmp_path, dump):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"nope")
    res = runner.invoke(app, ["detect", str(dump), "--store", str(tmp_path / "s"), "--model", str(junk), "--no-prefect"])
    assert res.exit_code == 2 and "not a readable checkpoint" in res.output


def test_cuda_asked_without_cuda(tmp_path, dump):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model = every_window_model(tmp_path / "m.pt")
    res = runner.invoke(app, ["detect", str(dump), "--store", str(tmp_path / "s"), "--model", str(model),
                              "--device", "cuda", "--no-prefect"])
    assert res.exit_code == 2 and "no CUDA device" in res.output


def test_runs_lists_runs(tmp_path, dump):
    model = every_window_model(tmp_path / "m.pt")
    store = tmp_path / "store"
    runner.invoke(app, ["detect", str(dump), "--store", str(store), "--model", str(model), "--no-prefect"])
    res = runner.invoke(app, ["runs", str(store)])
    assert res.exit_code == 0 and "completed" in res.output


def test_runs_shows_what_an_interrupted_run_committed(tmp_path, dump):
    from datetime import datetime, timezone

    from test_store import make_flush

    model = every_window_model(tmp_path / "m.pt")
    store = tmp_path / "store"
    runner.invoke(app, ["detect", str(dump), "--store", str(store), "--model", str(model), "--no-prefect"])
    st = Store(store)
    killed = "20990101T000000Z-dead00"  # a run killed after committing two recordings
    st.write_run({"run_id": killed, "flow": "detect", "status": "running", "model_id": "m1",
                  "started_at": datetime(2099, 1, 1, tzinfo=timezone.utc)})
    st.commit(killed, 0, make_flush(["x1", "x2"], killed, per_rec=3))
    (store / ".run.lock").write_text("pid 999999999 on " + __import__("socket").gethostname() + ": gone")
    res = runner.invoke(app, ["runs", str(store)])
    assert res.exit_code == 0, res.output
    rows = [[c.strip() for c in l.split("│")[1:-1]] for l in res.output.splitlines() if "interrupted" in l and "│" in l]
    assert len(rows) == 1  # (the table folds long ids; the status cell is the test)
    status, counts, detections = rows[0][1], rows[0][3], rows[0][4]
    assert (status, counts, detections) == ("interrupted", "2/0/0", "6")
    assert "completed" in res.output


def test_detect_shows_undated_detections_and_copes_with_empty_and_missing_dumps(tmp_path):
    model = every_window_model(tmp_path / "m.pt")
    undated = tmp_path / "undated"
    write_wav(undated / "field" / "pond.wav", noise(4.0, 16000), 16000)  # no recorder's name or header
    args = ["--model", str(model), "--no-prefect", "--workers", "0"]
    res = runner.invoke(app, ["detect", str(undated), "--store", str(tmp_path / "s1"), *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "time unknown" in res.output and "pond.wav" in res.output

    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["detect", str(tmp_path / "empty"), "--store", str(tmp_path / "s2"), *args],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "no recordings in these dumps" in res.output

    # a mistyped dump: the other dump is still analysed, then the command fails for cron to see
    res = runner.invoke(app, ["detect", str(undated), str(tmp_path / "nosuch"), "--store", str(tmp_path / "s3"),
                              *args], catch_exceptions=False)
    assert res.exit_code == 1, res.output
    assert "1 recordings scored" in res.output
    assert re.search(r"error: \S*nosuch: .*does not exist", res.output.replace("\n", ""))


def test_detect_fails_when_every_recording_fails(tmp_path, dump):
    model = every_window_model(tmp_path / "m.pt")
    conf = tmp_path / "ch.yaml"
    conf.write_text("detect:\n  channel: 1\n")  # the second channel of mono files
    res = runner.invoke(app, ["detect", str(dump), "--store", str(tmp_path / "s"), "--model", str(model),
                              "--config", str(conf), "--no-prefect", "--workers", "0"], catch_exceptions=False)
    assert res.exit_code == 1, res.output
    assert "0 recordings scored" in res.output and "1 failed" in res.output
    assert "detect.channel is 1 (counted from 0) but the file has 1 channel(s)" in res.output
    failed = run_sql(Store(tmp_path / "s"), "SELECT status, stage FROM failures ORDER BY stage")  # the SQL view
    assert sorted(zip(failed["stage"], failed["status"])) == [("detect", "failed"), ("scan", "empty")]


def test_runs_on_a_missing_store_is_an_error(tmp_path):
    res = runner.invoke(app, ["runs", str(tmp_path / "nosuch")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_a_dask_runner_without_prefect_is_refused_before_the_store_is_made(tmp_path, dump):
    conf = tmp_path / "dask.yaml"
    conf.write_text("runner:\n  kind: dask\n")
    res = runner.invoke(app, ["detect", str(dump), "--store", str(tmp_path / "s"), "--config", str(conf),
                              "--no-prefect"])
    assert res.exit_code == 2 and "runs through the Prefect flow" in res.output
    assert not (tmp_path / "s").exists()
