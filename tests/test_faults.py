"""Faults: kill -9 at seeded points of a run, then rerun; two runs on one store at once.

Runs are forked from a fork server that has imported torch and pam (so a child starts in
milliseconds, and never inherits a delta-rs runtime) and killed with SIGKILL: by themselves
at the k-th step that changes the store (before or after a data file is written, a version
of the results table is committed, or a file renamed or deleted: every state a run can be
cut in), or by the test after a random delay. After each kill, readers must see only whole
recordings; after a rerun, the detections and the windows' embeddings (``detect.embeddings``)
must equal those of an uninterrupted run, with no temporary file, orphan part or journal left
in the store.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
import traceback
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from models import every_window_model
from pam.cli.main import app
from pam.config import DetectConfig, PamConfig, RetriesConfig, RunnerConfig
from pam.ops.pipeline import detect_stage, scan_stage
from pam.store.embeddings import read_embeddings
from pam.store.store import Store, StoreBusy
from synth import noise, write_wav

# delta-rs must not run in a forked child once the parent used it (its tokio runtime panics),
# so runs start from a fork server that imported torch and pam but never touched a store
# (docs/store.md#processes).
CHILD = mp.get_context("forkserver")
CHILD.set_forkserver_preload(["torch", "pam.ops.pipeline", "pam.cli.main", "models", "synth", "test_faults"])
KEY = ["recording_id", "start_sample", "label"]
N_FILES = 6


def make_dump(root: Path, n: int = N_FILES) -> Path:
    for i in range(n):
        start = datetime(2024, 5, 1, 23, 58, tzinfo=timezone.utc) + timedelta(minutes=i)
        write_wav(root / ("AM01" if i % 2 else "AM02") / start.strftime("%Y%m%d_%H%M%S.WAV"),
                  noise(4.0, 16000, seed=i), 16000)
    return root


def scan_and_detect(dump: Path, store: Store, conf: PamConfig):
    """The nightly run without its summaries: what these tests are about."""
    with store.run_lock(conf.runner.wait_s, what="test run"):
        s = scan_stage(dump, store, conf)
        return detect_stage(store, [s.dump], conf, scan_problems=s.problems, progress=False)


def table(store: Store) -> pd.DataFrame:
    return store.read_detections().drop(columns=["run_id"]).sort_values(KEY).reset_index(drop=True)


def embedding_table(store: Store) -> pd.DataFrame:
    """Every committed window embedding, one row per (recording, start sample, model), vector as bytes."""
    emb = read_embeddings(store) if store.snapshot() is not None else None
    if emb is None or not len(emb):
        return pd.DataFrame(columns=["recording_id", "start_sample", "model_id", "vector"])
    rows = emb.rows.to_pandas()[["recording_id", "start_sample", "model_id"]]
    rows["vector"] = [v.tobytes() for v in emb.vectors]
    return rows.sort_values(["recording_id", "start_sample", "model_id"]).reset_index(drop=True)


def same_embeddings(store: Store, reference: pd.DataFrame, recordings: set[str] | None = None) -> None:
    got = embedding_table(store)
    want = reference if recordings is None else reference[reference["recording_id"].isin(recordings)]
    assert not got.duplicated(["recording_id", "start_sample", "model_id"]).any()
    cols = ["recording_id", "start_sample", "model_id", "vector"]
    assert list(got[cols].itertuples(index=False, name=None)) == list(want[cols].itertuples(index=False, name=None))


def same_tables(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert len(a) == len(b)
    pd.testing.assert_frame_equal(a.drop(columns=["score"]), b.drop(columns=["score"]))
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-4)


def leftovers(store: Store) -> list[str]:
    """Temporary files, journals and files under results/ that no version of the table names."""
    root = store.root
    out = [str(p.relative_to(root)) for p in root.rglob("*.tmp")]
    out += [str(p.relative_to(root)) for p in root.glob(".replace-*.json")]
    out += [str(p.relative_to(root)) for p in store.unnamed_files()]
    return out


def _instrument(on_step) -> None:
    """Call ``on_step(phase)`` before and after every step that changes the store on disk: each
    data file written (``ResultsTable.write_file``), each commit of the table's next version
    (``ResultsTable.commit``), and each rename or delete (manifest, run rows, recovery)."""
    from pam.store.results import ResultsTable

    def wrap(real):
        def step(*args, **kwargs):
            on_step("before")
            out = real(*args, **kwargs)
            on_step("after")
            return out
        return step

    os.replace, os.unlink = wrap(os.replace), wrap(os.unlink)
    ResultsTable.write_file = wrap(ResultsTable.write_file)
    ResultsTable.commit = wrap(ResultsTable.commit)


def _run_child(dump: Path, root: Path, conf: PamConfig, kill_at: tuple[int, str] | None) -> None:
    """Body of a run in a child process. With ``kill_at`` = (k, phase) it SIGKILLs itself
    before or after its k-th step (see ``_instrument``)."""
    try:
        import torch

        torch.set_num_threads(1)
        if kill_at is not None:
            k, phase = kill_at
            count = [0]

            def on_step(now: str) -> None:
                if now == "before":
                    count[0] += 1
                if count[0] == k and phase == now:
                    os.kill(os.getpid(), signal.SIGKILL)

            _instrument(on_step)
        scan_and_detect(dump, Store(root), conf)
    except BaseException:  # pragma: no cover - shown in the test's failure
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _count_steps(dump: Path, root: Path, conf: PamConfig, conn) -> None:
    import torch

    torch.set_num_threads(1)  # one thread in children, as in the runs that get killed
    count = [0]

    def on_step(now: str) -> None:
        if now == "before":
            count[0] += 1

    _instrument(on_step)
    scan_and_detect(dump, Store(root), conf)
    conn.send(count[0])
    os._exit(0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    dump = make_dump(tmp / "dump")
    model = every_window_model(tmp / "m.pt")
    conf = PamConfig(model=str(model), detect=DetectConfig(num_workers=0, flush_every=1, batch_size=2,
                                                           embeddings=True),
                     retries=RetriesConfig(count=0, delay_s=0))
    ref = Store(tmp / "ref")
    scan_and_detect(dump, ref, conf)
    assert len(embedding_table(ref)) == ref.done_table()["windows"].sum() > 0
    return tmp, dump, conf, (table(ref), embedding_table(ref)), set(ref.done_table()["recording_id"])


def check_visible_state(store: Store, references: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """Between kill and rerun: every committed recording is whole (detections and embeddings),
    nothing else is visible."""
    reference, vectors = references
    done = store.done_table()
    same_embeddings(store, vectors, set(done["recording_id"]))
    assert not done.duplicated(["recording_id", "model_id", "settings_hash"]).any()
    det = table(store) if store.snapshot() is not None else reference.iloc[0:0]
    assert set(det["recording_id"]) <= set(done["recording_id"])
    expected = reference[reference["recording_id"].isin(set(done["recording_id"]))].reset_index(drop=True)
    same_tables(det, expected)


def test_kill_minus_9_at_seeded_points_then_rerun_equals_uninterrupted_run(setup):
    tmp, dump, conf, references, ref_done = setup
    reference, vectors = references
    # How many steps an uninterrupted run makes: the places a kill can land.
    warm = CHILD.Process(target=os.getpid)  # start the fork server first: timed runs below start as fast
    warm.start()
    warm.join(120)
    recv, send = CHILD.Pipe(duplex=False)
    p = CHILD.Process(target=_count_steps, args=(dump, tmp / "count", conf, send))
    t0 = time.monotonic()
    p.start()
    assert recv.poll(120), "the counting run did not finish"
    steps = recv.recv()
    p.join(60)
    full_s = time.monotonic() - t0
    assert steps > 3 * N_FILES  # per commit: detection file, done file, the commit; manifest, run rows

    rng = random.Random(20240501)
    points = [("step", k, phase) for k, phase in rng.sample([(k, ph) for k in range(1, steps + 1)
                                                             for ph in ("before", "after")], 16)]
    points += [("timer", rng.uniform(0.05, 0.9) * full_s, None) for _ in range(8)]
    killed = 0
    for n, (how, at, phase) in enumerate(points):
        root = tmp / f"killed-{n}"
        proc = CHILD.Process(target=_run_child, args=(dump, root, conf, (at, phase) if how == "step" else None))
        proc.start()
        if how == "timer":
            deadline = time.monotonic() + at
            while time.monotonic() < deadline and proc.exitcode is None:
                time.sleep(0.002)
            alive = proc.exitcode is None
            # polling exitcode reaps a finished child, and its pid is gone; an unreaped one
            # (alive above, perhaps a zombie now) can always be signalled
            if alive:
                os.kill(proc.pid, signal.SIGKILL)
        proc.join(60)
        assert proc.exitcode in (-signal.SIGKILL, 0), f"point {n}: the run crashed (exit {proc.exitcode})"
        if proc.exitcode == -signal.SIGKILL and (how == "step" or alive):
            killed += 1
        store = Store(root)
        check_visible_state(store, references)
        scan_and_detect(dump, store, conf)  # the rerun
        same_tables(table(store), reference)
        same_embeddings(store, vectors)
        assert set(store.done_table()["recording_id"]) == ref_done
        # files the killed run wrote but never committed: invisible, and deleted by recovery once
        # old enough to belong to no commit in flight (the nightly's recover waits an hour)
        store.recover(orphan_age_s=0)
        assert leftovers(store) == [], f"point {n} ({how} {at} {phase})"
    assert killed >= 20, f"only {killed} of {len(points)} kills landed inside a run"


def _busy_child(dump: Path, root: Path, conf: PamConfig, conn) -> None:
    try:
        import torch

        torch.set_num_threads(1)
        report = scan_and_detect(dump, Store(root), conf)
        conn.send(("done", report.recordings_done))
    except StoreBusy as exc:
        conn.send(("busy", str(exc)))
    except BaseException as exc:  # pragma: no cover
        conn.send(("error", repr(exc)))
    os._exit(0)


def _start(dump, root, conf):
    recv, send = CHILD.Pipe(duplex=False)
    proc = CHILD.Process(target=_busy_child, args=(dump, root, conf, send))
    proc.start()
    return proc, recv


def test_two_runs_at_once_neither_corrupt_nor_double(setup):
    tmp, dump, conf, (reference, vectors), ref_done = setup
    waiting = conf.model_copy(update={"runner": RunnerConfig(wait_s=120)})
    root = tmp / "together"
    runs = [_start(dump, root, waiting) for _ in range(2)]
    outcomes = [recv.recv() if recv.poll(120) else ("timeout", None) for _proc, recv in runs]
    for proc, _recv in runs:
        proc.join(60)
    assert [o[0] for o in outcomes] == ["done", "done"], outcomes
    assert sorted(o[1] for o in outcomes) == [0, N_FILES]  # the second waited, then found it all done
    store = Store(root)
    same_tables(table(store), reference)
    same_embeddings(store, vectors)
    assert not store.done_table().duplicated("recording_id").any()
    assert leftovers(store) == []


def test_second_run_stops_with_a_clear_message_when_it_may_not_wait(setup):
    tmp, dump, conf, (reference, _vectors), _ = setup
    root = tmp / "busy"
    # This process holds the store for as long as the second run needs to find it busy (a
    # first run in a child could finish before a slow-starting second one tries).
    with Store(root).run_lock(0, what="test run"):
        second, second_recv = _start(dump, root, conf)  # wait_s = 0
        assert second_recv.poll(120)
        verdict, message = second_recv.recv()
        second.join(60)
    assert verdict == "busy"
    assert "busy with another pam run" in message and f"pid {os.getpid()}" in message and "test run" in message
    assert not Store(root).read_runs().shape[0]  # refused before it recorded a run
    again, again_recv = _start(dump, root, conf)  # once the store is free, the same run goes through
    assert again_recv.poll(120) and again_recv.recv() == ("done", N_FILES)
    again.join(60)
    same_tables(table(Store(root)), reference)


def _hold_lock(root: Path, ready, release) -> None:
    with Store(root).run_lock(what="someone else's run"):
        ready.set()
        release.wait(60)
    os._exit(0)


def test_cli_names_the_run_that_holds_the_store(setup, tmp_path):
    _, dump, conf, _, _ = setup
    ready, release = CHILD.Event(), CHILD.Event()
    holder = CHILD.Process(target=_hold_lock, args=(tmp_path / "store", ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        res = CliRunner().invoke(app, ["detect", str(dump), "--store", str(tmp_path / "store"), "--model", conf.model,
                                       "--no-prefect", "--workers", "0"])
    finally:
        release.set()
        holder.join(30)
    assert res.exit_code == 2
    assert "busy with another pam run" in res.output and "someone else's run" in res.output
    assert f"pid {holder.pid}" in res.output
