"""One worker process per device (``detect.devices``), checked on the CPU with ``cpu,cpu``:
the same rows as one process, nothing added by a rerun, and a worker killed with kill -9 loses
or doubles nothing once the next run has done what it left."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from models import every_window_model
from pam.cli.main import app
from pam.config import ConfigError, DetectConfig, PamConfig, RetriesConfig, load_config
from pam.detect.detection import SEQ_SPAN, resolve_device
from pam.detect.shards import split, worker_config
from pam.detect.worker_process import WorkerFailed, call_in_worker
from pam.io.manifest import recordings_in
from pam.store.store import PART_NAME, Store
from pam.ops.pipeline import detect_stage, scan_stage
from pamstore import scan_and_detect
from test_shards import make_dump, same_tables, table


def devices_conf(base: PamConfig, devices: list[str]) -> PamConfig:
    """``base`` with ``detect.devices``, validated as a config file's would be."""
    data = base.model_dump(mode="json")
    data["detect"]["devices"] = devices
    return PamConfig.model_validate(data)


@pytest.fixture
def conf(tmp_path):
    model = every_window_model(tmp_path / "m.pt")
    return PamConfig(model=str(model), detect=DetectConfig(num_workers=0, batch_size=4, flush_every=1),
                     retries=RetriesConfig(count=0, delay_s=0))


def test_devices_config_is_checked_and_sets_one_shard_per_device():
    assert load_config(None, {"detect.devices": ["cpu", "cpu"]}).runner.shards == 2
    assert load_config(None, {"detect.devices": ["cuda:0", "cuda:1", "cuda:2"]}).runner.shards == 3
    for devices, words in [(["cuda:0"], "set device: cuda:0"), (["cuda", "cuda:1"], "by its index"),
                           (["cuda:1", "cuda:1"], "cuda:1 twice"), (["cpu", "auto"], "'auto'")]:
        with pytest.raises(ConfigError, match=words):
            load_config(None, {"detect.devices": devices})
    with pytest.raises(ConfigError, match="runner.shards is 3"):
        load_config(None, {"detect.devices": ["cpu", "cpu"], "runner.shards": 3})
    with pytest.raises(ConfigError, match="runner.kind"):
        load_config(None, {"detect.devices": ["cpu", "cpu"], "runner.kind": "dask"})
    with pytest.raises(ConfigError, match="device"):
        load_config(None, {"detect.device": "gpu"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_a_gpu_that_is_not_there_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="'cuda:1' asked for, but no CUDA device"):
        resolve_device("cuda:1")
    dump = make_dump(tmp_path / "dump", n=1)
    result = CliRunner().invoke(app, ["detect", str(dump), "--store", str(tmp_path / "s"),
                                      "--device", "cuda:0,cuda:1", "--no-prefect"])
    assert result.exit_code != 0 and "no CUDA device" in result.output
    assert not (tmp_path / "s").exists()  # refused before anything was created


def test_each_worker_gets_its_device_and_a_share_of_the_cores(conf):
    two = devices_conf(conf.model_copy(update={"detect": DetectConfig(num_workers=None)}), ["cpu", "cpu"])
    mine, threads = worker_config(two, 1)
    assert mine.detect.device == "cpu" and mine.detect.devices == [] and mine.runner.shards == 1
    assert threads == max(1, len(os.sched_getaffinity(0)) // 2)
    assert mine.detect.num_workers is not None  # chosen for its share, not for the whole machine


def test_two_cpu_workers_give_the_rows_of_one_process_and_a_rerun_adds_nothing(tmp_path, conf):
    dump = make_dump(tmp_path / "dump", n=6)
    single = Store(tmp_path / "single")
    scan_and_detect(dump, single, conf)
    store = Store(tmp_path / "two")
    two = devices_conf(conf, ["cpu", "cpu"])
    report = scan_and_detect(dump, store, two)
    assert report.recordings_done == 6 and report.failures == []
    same_tables(table(store), table(single))
    # both workers committed, each in its own block of commit numbers
    assert {int(PART_NAME.match(p.name)["seq"]) // SEQ_SPAN for p in store.detection_files()} == {0, 1}
    row = store.read_runs().iloc[0]
    assert row["status"] == "completed" and row["recordings_done"] == 6 and row["device"] == "cpu"
    before = table(store)
    again = scan_and_detect(dump, store, two)
    assert again.recordings_done == 0 and again.recordings_skipped == 6
    pd.testing.assert_frame_equal(table(store), before)


class RecordedBar:
    """Stands in for the run's tqdm bar: what the shards passed to it."""

    def __init__(self, total_ms: int, enabled: bool = True):
        self.total, self.n, self.updates, self.closed = total_ms, 0, 0, False

    def update(self, ms: int) -> None:
        self.n += ms
        self.updates += 1

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("how", ["worker processes", "threads"])
def test_the_shards_of_a_run_fill_one_progress_bar(tmp_path, conf, monkeypatch, how):
    import pam.detect.shards

    bars: list[RecordedBar] = []
    monkeypatch.setattr(pam.detect.shards, "audio_bar", lambda *a, **k: bars.append(RecordedBar(*a, **k)) or bars[-1])
    dump = make_dump(tmp_path / "dump", n=4)
    store = Store(tmp_path / "s")
    two = devices_conf(conf, ["cpu", "cpu"]) if how == "worker processes" else \
        PamConfig.model_validate({**conf.model_dump(mode="json"), "runner": {"shards": 2}})
    s = scan_stage(dump, store, two)
    report = detect_stage(store, [s.dump], two, progress=True)
    assert report.recordings_done == 4
    [bar] = bars
    audio_ms = int(round(recordings_in(store, [s.dump])["duration_s"].sum() * 1000))
    assert bar.closed and bar.total == audio_ms
    assert abs(bar.n - audio_ms) <= 4 and bar.updates >= 4  # each recording's windows, from both shards


def test_a_worker_killed_mid_run_loses_and_doubles_nothing_after_a_rerun(tmp_path, conf):
    dump = make_dump(tmp_path / "dump", n=8)
    single = Store(tmp_path / "single")
    scan_and_detect(dump, single, conf)
    store = Store(tmp_path / "two")
    # one window per batch: a file is committed before the next one is opened
    two = devices_conf(conf.model_copy(update={"detect": conf.detect.model_copy(update={"batch_size": 1})}),
                       ["cpu", "cpu"])
    s = scan_stage(dump, store, two)
    rows = recordings_in(store, [s.dump])
    shards = split(rows, 2)
    path_of = dict(zip(rows["recording_id"], rows["path"]))
    # The last file of shard 1 becomes a FIFO: worker 1 commits the files before it, then blocks
    # opening it, where it is killed; the file comes back for the rerun.
    victim = max(path_of[r] for r in shards[1])
    before_victim = {r for r in shards[1] if path_of[r] != victim}
    kept = tmp_path / "kept.wav"
    shutil.move(victim, kept)
    os.mkfifo(victim)
    outcome: dict = {}
    run = threading.Thread(target=lambda: outcome.update(report=detect_stage(store, [s.dump], two, progress=False)))
    run.start()
    deadline = time.monotonic() + 120
    worker = None
    while time.monotonic() < deadline:
        if before_victim <= set(store.done_table()["recording_id"]):
            worker = next((p for p in multiprocessing.active_children() if p.name == "pam-detect-shard-1"), None)
            break
        time.sleep(0.2)
    assert worker is not None, "worker 1 did not reach the blocking file"
    os.kill(worker.pid, signal.SIGKILL)
    run.join(120)
    report = outcome["report"]
    [failure] = [f for f in report.failures if f["stage"] == "shard"]
    assert "SIGKILL" in failure["reason"] and failure["recordings"] == 1, failure
    assert report.recordings_done == 7 and report.recordings_failed == 1
    assert store.read_runs().iloc[0]["status"] == "failed"
    os.unlink(victim)
    shutil.move(kept, victim)
    again = detect_stage(store, [s.dump], two, progress=False)
    assert again.recordings_done == 1 and again.recordings_skipped == 7 and again.failures == []
    same_tables(table(store), table(single))  # every window once: nothing lost, nothing doubled


def doubled_with_a_warning(x: int) -> int:
    logging.getLogger("pam.detect.detection").warning("%s: a warning from the worker", "/d/f.wav")
    return 2 * x


def refuses(x: int) -> int:
    raise ValueError(f"no {x}")


def test_a_worker_returns_its_result_and_its_log_lines_and_its_errors(caplog):
    logger = logging.getLogger("pam.test.worker")
    with caplog.at_level(logging.INFO, logger="pam.test.worker"):
        assert call_in_worker(doubled_with_a_warning, (21,), name="w", threads=1, logger=logger) == 42
    assert ("pam.test.worker", logging.WARNING, "/d/f.wav: a warning from the worker") in caplog.record_tuples
    with pytest.raises(WorkerFailed, match="worker process w: ValueError: no 3"):
        call_in_worker(refuses, (3,), name="w", threads=1, logger=logger)


def sleeps_after_writing_its_pid(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


def starts_a_sleeping_worker(path: str) -> None:
    call_in_worker(sleeps_after_writing_its_pid, (path,), name="sleeper", threads=1)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie waiting for a reaper has exited


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads process states from /proc")
def test_a_worker_exits_when_the_run_that_started_it_is_killed(tmp_path):
    pid_file = tmp_path / "worker.pid"
    run = multiprocessing.get_context("spawn").Process(target=starts_a_sleeping_worker, args=(str(pid_file),))
    run.start()
    deadline = time.monotonic() + 120
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    worker = int(pid_file.read_text())
    assert alive(worker)
    os.kill(run.pid, signal.SIGKILL)
    run.join()
    deadline = time.monotonic() + 15
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(worker), "the worker went on after its run was killed"
