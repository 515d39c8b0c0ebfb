"""The Prefect flow end to end. These share one Prefect test server (session fixture)."""

import pytest
from typer.testing import CliRunner

from models import every_window_model
from pam.cli.main import app
from pam.config import DetectConfig, PamConfig
from pam.ops.pipeline import run_nightly
from pam.store.store import Store
from synth import noise, write_wav

pytestmark = pytest.mark.prefect


def test_nightly_flow_matches_library_run(tmp_path, prefect_harness):
    from flows.nightly import nightly

    dump = tmp_path / "dump"
    for i in range(3):
        write_wav(dump / "AM01" / f"20240501_02{i}000.WAV", noise(5.0, 22050, seed=i), 22050)
    (dump / "AM01" / "broken.wav").write_text("not audio")
    model = every_window_model(tmp_path / "m.pt")
    conf = PamConfig(model=str(model), detect=DetectConfig(num_workers=0))
    out = nightly([str(dump)], str(tmp_path / "flow-store"), conf.model_dump(mode="json"))
    assert out["detect"]["recordings_done"] == 3
    assert [p["status"] for s in out["scans"] for p in s["problems"]] == ["not_audio"]
    run_nightly([str(dump)], Store(tmp_path / "lib-store"), conf, progress=False)
    cols = ["recording_id", "start_sample", "label", "site", "date"]
    a = Store(tmp_path / "flow-store").read_detections()[cols].sort_values(cols).reset_index(drop=True)
    b = Store(tmp_path / "lib-store").read_detections()[cols].sort_values(cols).reset_index(drop=True)
    assert len(a) == 9 and a.equals(b)
    assert (tmp_path / "flow-store" / "summaries" / "daily_counts" / "daily_counts.parquet").exists()
    again = nightly([str(dump)], str(tmp_path / "flow-store"), conf.model_dump(mode="json"))
    assert again["detect"]["recordings_done"] == 0 and again["detect"]["recordings_skipped"] == 3


@pytest.fixture
def prefect_console_text(monkeypatch):
    """What Prefect's console handler prints, with its INFO lines let through as outside the
    tests (conftest.py sets PREFECT_LOGGING_LEVEL=WARNING for the other tests)."""
    import io
    import logging

    from flows.nightly import nightly  # noqa: F401 - Prefect sets up its logging on import
    from prefect.logging.handlers import PrefectConsoleHandler

    buffer = io.StringIO()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            monkeypatch.setattr(handler.console, "file", buffer)
    prefect_logger = logging.getLogger("prefect")
    level = prefect_logger.level
    prefect_logger.setLevel(logging.INFO)
    yield buffer
    prefect_logger.setLevel(level)


def test_cli_runs_through_prefect_by_default(tmp_path, prefect_harness, prefect_console_text):
    write_wav(tmp_path / "dump" / "S1" / "20240501_020000.WAV", noise(4.0, 16000), 16000)
    write_wav(tmp_path / "dump" / "S1" / "SM4_20240501_030000.wav", noise(4.0, 16000), 16000)  # no site clock
    model = every_window_model(tmp_path / "m.pt")
    args = ["detect", str(tmp_path / "dump"), "--store", str(tmp_path / "s"), "--model", str(model), "--workers", "0"]
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "2 recordings scored" in res.output
    runs = Store(tmp_path / "s").read_runs()
    assert len(runs) == 1 and runs.iloc[0]["status"] == "completed"
    # Prefect's INFO lines stay off the terminal; pam's warning comes once, in its own block
    quiet = prefect_console_text.getvalue()
    assert "Beginning flow run" not in quiet and "Finished in state" not in quiet, quiet
    assert "have no timezone" not in quiet
    lines = res.output.splitlines()
    said = [k for k, line in enumerate(lines) if "site(s) S1 have no timezone" in line]
    assert len(said) == 1 and lines[said[0] - 1] == "warnings:", res.output
    # --verbose: the whole log of the run (here a rerun with nothing left to do)
    again = CliRunner().invoke(app, [*args, "--verbose"], catch_exceptions=False)
    assert again.exit_code == 0 and "2 already done" in again.output, again.output
    loud = prefect_console_text.getvalue()[len(quiet):]
    assert "Beginning flow run" in loud and "Finished in state Completed" in loud, loud


def test_a_busy_store_ends_the_flow_as_a_deferral_not_a_failure(tmp_path, prefect_harness):
    import subprocess
    import sys

    from flows.nightly import nightly

    write_wav(tmp_path / "dump" / "S1" / "20240501_020000.WAV", noise(4.0, 16000), 16000)
    store = tmp_path / "store"
    Store(store).ensure()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom pam.store.store import Store\n"
        f"with Store({str(store)!r}).run_lock(what='holder test'):\n"
        "    print('held', flush=True)\n    time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        model = every_window_model(tmp_path / "m.pt")
        conf = PamConfig(model=str(model), detect=DetectConfig(num_workers=0))
        state = nightly([str(tmp_path / "dump")], str(store), conf.model_dump(mode="json"), return_state=True)
        assert state.is_completed()  # not Failed: failure automations must not fire for a deferral
        out = state.result()
        assert "holder test" in out["busy"] and out["detect"] is None
        res = CliRunner().invoke(app, ["detect", str(tmp_path / "dump"), "--store", str(store), "--model", str(model)])
        assert res.exit_code == 2 and "busy with another pam run" in res.output.replace("\n", " ")
    finally:
        holder.kill()
        holder.wait()
    assert Store(store).read_detections().empty
