import re
from contextlib import contextmanager

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
    assert res.output.count("file is empty (0 bytes)") == 1  # listed once, not again among the warnings
    assert "warnings:" not in res.output
    assert "1 recording scored" in res.output
    # the run's line is one line, however narrow the terminal (it wrapped mid-phrase at 80 columns)
    assert re.search(r"^run \S+: 1 recording scored \(.* real time\), 0 already done, 0 failed, 3 new detections$",
                     res.output, re.M), res.output
    assert [line for line in res.output.splitlines() if line][-1] == \
        f"report: {store.resolve() / 'reports' / 'report.html'} (summaries, figures and the species table; " \
        "pam report to redo it)"
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


def test_a_config_site_no_recording_has_is_one_warning_with_the_closest_site(tmp_path):
    write_wav(tmp_path / "dump" / "SM4-CREEK" / "SM4CREEK_20240501_020000.wav", noise(3.0, 16000), 16000)
    conf = tmp_path / "typo.yaml"
    conf.write_text("sites:\n  SM4CREEK:\n    timezone: America/New_York\n  Pond:\n    utc_offset: '-5'\n")
    res = runner.invoke(app, ["scan", str(tmp_path / "dump"), "--store", str(tmp_path / "s"), "--config", str(conf)])
    assert res.exit_code == 0, res.output
    lines = [line.strip() for line in res.output.splitlines()]
    assert "sites.SM4CREEK in the config matches no recording's site, so its clock and position go unused " \
           "(did you mean SM4-CREEK?)" in lines
    assert "sites.Pond in the config matches no recording's site, so its clock and position go unused " \
           "(the store's sites: SM4-CREEK)" in lines
    model = every_window_model(tmp_path / "m.pt")
    res = runner.invoke(app, ["detect", str(tmp_path / "dump"), "--store", str(tmp_path / "s2"), "--config", str(conf),
                              "--model", str(model), "--no-prefect", "--workers", "0", "--show", "0"])
    assert res.exit_code == 0, res.output
    assert res.output.count("did you mean SM4-CREEK?") == 1
    good = tmp_path / "good.yaml"
    good.write_text("sites:\n  SM4-CREEK:\n    timezone: America/New_York\n")
    res = runner.invoke(app, ["scan", str(tmp_path / "dump"), "--store", str(tmp_path / "s3"), "--config", str(good)])
    assert res.exit_code == 0 and "matches no recording" not in res.output


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
    assert res.exit_code == 2 and len([line for line in res.output.splitlines() if line.strip()]) == 1
    assert f"{junk}: not a pam checkpoint (torch.load failed: " in res.output
    assert "give a .pt written by pam train, an .onnx file with its card, or a model's short name" in res.output


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

    # a mistyped dump among good ones: refused before anything is analysed or created
    res = runner.invoke(app, ["detect", str(undated), str(tmp_path / "nosuch"), "--store", str(tmp_path / "s3"),
                              *args], catch_exceptions=False)
    assert res.exit_code == 2, res.output
    assert res.output.strip() == f"error: {tmp_path / 'nosuch'}: dump folder does not exist"
    assert not (tmp_path / "s3").exists()


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


@pytest.fixture
def prefect_starts(monkeypatch):
    """Every attempt to reach a Prefect server, recorded and refused: argument errors come first."""
    import pam.ops.prefect_server

    calls = []

    @contextmanager
    def refuse(*args, **kwargs):
        calls.append(args)
        raise pam.ops.prefect_server.PrefectServerError("test: Prefect must not start")
        yield  # pragma: no cover

    monkeypatch.setattr(pam.ops.prefect_server, "prefect_api", refuse)
    return calls


def _bad_arguments(tmp_path, dump):
    """(arguments after `detect`, the expected one-line error) per kind of bad argument."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a dump")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("detect:\n  hop_s: 0\n")
    store = tmp_path / "store"
    return {
        "missing dump": ([str(tmp_path / "no" / "such" / "dump"), "--store", str(store)],
                         f"{tmp_path / 'no' / 'such' / 'dump'}: dump folder does not exist"),
        "dump is a file": ([str(a_file), "--store", str(store)], f"{a_file}: dump is not a folder"),
        "store inside dump": ([str(dump), "--store", str(dump / "store")],
                              f"{dump / 'store'}: the store must not be inside the dump {dump}"),
        "store is a file": ([str(dump), "--store", str(a_file)], f"{a_file}: the store is a file, not a folder"),
        "missing model": ([str(dump), "--store", str(store), "--model", str(tmp_path / "none.pt")],
                          f"{tmp_path / 'none.pt'}: model file not found"),
        "bad config": ([str(dump), "--store", str(store), "--config", str(bad_yaml)],
                       f"{bad_yaml}: detect.hop_s: Input should be greater than 0"),
    }


@pytest.mark.parametrize("case", ["missing dump", "dump is a file", "store inside dump", "store is a file",
                                  "missing model", "bad config"])
def test_bad_arguments_are_one_line_before_prefect_or_any_file(tmp_path, dump, prefect_starts, case):
    args, message = _bad_arguments(tmp_path, dump)[case]
    before = sorted(p for p in tmp_path.rglob("*"))
    res = runner.invoke(app, ["detect", *args], catch_exceptions=False)  # with Prefect, as by default
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), res.output
    assert prefect_starts == []  # refused before the Prefect server
    assert sorted(p for p in tmp_path.rglob("*")) == before  # no store, no lock, no report


@pytest.mark.parametrize("case", ["missing dump", "dump is a file", "store inside dump", "store is a file",
                                  "bad config"])
def test_scan_refuses_bad_arguments_before_creating_the_store(tmp_path, dump, case):
    args, message = _bad_arguments(tmp_path, dump)[case]
    before = sorted(p for p in tmp_path.rglob("*"))
    res = runner.invoke(app, ["scan", *args])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), res.output
    assert sorted(p for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("command", [["summarize"], ["query"], ["report", "--out", "REPORT"], ["runs"],
                                     ["sql", "SELECT 1"]])
def test_commands_on_a_missing_store_say_so_and_create_nothing(tmp_path, command):
    store = tmp_path / "nosuch-store"
    command = [str(tmp_path / c) if c == "REPORT" else c for c in command]
    res = runner.invoke(app, [command[0], str(store), *command[1:]])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == f"error: store {store} does not exist"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["store", "compact"], ["store", "history"], ["store", "vacuum"], ["query"],
                                     ["summarize"], ["runs"]])
def test_commands_on_a_folder_that_is_not_a_store_say_so_and_write_nothing(tmp_path, command):
    """A mistyped --store that names a dump: one line, and nothing written into the recordings."""
    dump = tmp_path / "dump"
    write_wav(dump / "S1" / "20240501_020000.WAV", noise(1.0, 16000), 16000)
    before = sorted(p for p in tmp_path.rglob("*"))
    res = runner.invoke(app, [*command, str(dump)])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == (f"error: {dump} is not a pam store (no results/, runs/ or manifest/ in it): give "
                                  "the folder that `pam detect --store` wrote")
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_pam_warnings_come_once_in_a_block_of_their_own(tmp_path):
    """A Song Meter site without a clock: pam warns once, under "warnings:", not as a log line."""
    model = every_window_model(tmp_path / "m.pt")
    write_wav(tmp_path / "dump" / "CREEK" / "SM4_20240501_020000.wav", noise(4.0, 16000), 16000)
    res = runner.invoke(app, ["detect", str(tmp_path / "dump"), "--store", str(tmp_path / "s"), "--model",
                              str(model), "--no-prefect", "--workers", "0"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    said = [k for k, line in enumerate(lines) if "site(s) CREEK have no timezone" in line]
    assert len(said) == 1 and lines[said[0] - 1].endswith("warnings:"), res.output  # (after the progress bar)
    assert said[0] < next(k for k, line in enumerate(lines) if line.startswith("run "))
    # with the site's clock in a config the warning is gone
    conf = tmp_path / "clock.yaml"
    conf.write_text("sites:\n  CREEK:\n    timezone: America/New_York\n")
    res = runner.invoke(app, ["detect", str(tmp_path / "dump"), "--store", str(tmp_path / "s2"), "--model",
                              str(model), "--config", str(conf), "--no-prefect", "--workers", "0"])
    assert res.exit_code == 0 and "warnings:" not in res.output and "timezone" not in res.output, res.output
    assert "2024-05-01 06:00:00 " in res.output  # 02:00 EDT


def test_verbose_without_prefect_shows_pam_info_lines(tmp_path, dump):
    model = every_window_model(tmp_path / "m.pt")
    args = ["detect", str(dump), "--store", str(tmp_path / "s"), "--model", str(model), "--no-prefect",
            "--workers", "0"]
    quiet = runner.invoke(app, args, catch_exceptions=False)
    assert quiet.exit_code == 0 and "pam: scanned" not in quiet.output
    loud = runner.invoke(app, [*args, "--verbose"], catch_exceptions=False)
    assert loud.exit_code == 0 and "pam: scanned" in loud.output, loud.output


def test_a_dump_gone_by_scan_time_is_one_error_and_exit_1(tmp_path, dump, monkeypatch):
    """A dump that passes the argument check but cannot be scanned (unmounted meanwhile): the
    other dumps are analysed, the error is printed once, and the status is 1 for cron."""
    import pam.cli.detection

    model = every_window_model(tmp_path / "m.pt")
    monkeypatch.setattr(pam.cli.detection, "check_scan_inputs", lambda dumps, store: None)
    gone = tmp_path / "gone"
    res = runner.invoke(app, ["detect", str(dump), str(gone), "--store", str(tmp_path / "s"), "--model", str(model),
                              "--no-prefect", "--workers", "0"], catch_exceptions=False)
    assert res.exit_code == 1, res.output
    assert "1 recording scored" in res.output
    assert res.output.count("dump folder does not exist") == 1, res.output
    assert f"error: {gone}: dump folder does not exist" in res.output


def test_tables_into_a_pipe_are_not_folded_at_80_columns(monkeypatch):
    """Into a pipe or a log file rich would fold tables at 80 columns (species names cut
    mid-word); pam gives them 160 there, a terminal keeps its own width, COLUMNS still decides."""
    import io

    from rich.console import Console
    from rich.table import Table

    from pam.cli.app import PIPED_WIDTH, PipeWideConsole, output_width

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("COLUMNS", raising=False)
    assert output_width(io.StringIO()) == PIPED_WIDTH == 160
    assert output_width(Tty()) is None
    monkeypatch.setenv("COLUMNS", "100")
    assert output_width(io.StringIO()) is None
    monkeypatch.delenv("COLUMNS")
    table = Table()
    for col in ("head", "kind", "embedding model", "classes", "thresholds", "windows", "registered (UTC)"):
        table.add_column(col, overflow="fold")
    table.add_row("ff0d1f57cf640e72", "linear", "birdnet-v2.4-6522", "bobwhite_covey", "bobwhite_covey 0.607", "117",
                  "2026-11-27 19:20")
    out = io.StringIO()
    PipeWideConsole(file=out).print(table)
    assert "bobwhite_covey 0.607" in out.getvalue() and "linear" in out.getvalue()
    folded = io.StringIO()
    Console(file=folded, width=80).print(table)
    assert "bobwhite_covey 0.607" not in folded.getvalue()  # what 80 columns did
