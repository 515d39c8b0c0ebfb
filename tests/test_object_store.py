"""A store on object storage (``s3://bucket/pam``) against a local S3 server (moto, started here
on 127.0.0.1 with a free port): detect, summarize, query and sql, through the Python API and the
`pam` commands; two writers (processes, and two `pam detect` runs) committing at once."""

import multiprocessing as mp
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

moto = pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
boto3 = pytest.importorskip("boto3")

from models import every_window_model  # noqa: E402
from pam.analysis.summaries import summarize  # noqa: E402
from pam.cli.main import app  # noqa: E402
from pam.config import DetectConfig  # noqa: E402
from pam.detect.checkpoint import load_checkpoint  # noqa: E402
from pam.detect.detection import run_detection  # noqa: E402
from pam.io.manifest import scan  # noqa: E402
from pam.store.location import NotOnObjectStorage  # noqa: E402
from pam.store.query import query_detections, run_sql  # noqa: E402
from pam.store.store import Store  # noqa: E402
from pamstore import Rec, flush_for  # noqa: E402
from test_detect import make_dump  # noqa: E402

BUCKET = "pam-test"
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("moto server did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def s3_store(s3_endpoint, monkeypatch, request):
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": s3_endpoint, "AWS_ALLOW_HTTP": "true"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    return f"s3://{BUCKET}/{request.node.name.replace('_', '-')}"


def _writer(uri: str, name: str, rids: list[str], out) -> None:
    """One writer process: commits each recording as its own flush."""
    store = Store(uri)
    run = f"20240601T000000Z-{name}"
    got = 0
    for seq, rid in enumerate(rids):
        rec = Rec(rid, "A", "2024-05-01T05:00", 60, detections=[(1.0, "x", 0.9, "m1"), (4.0, "y", 0.8, "m1")])
        got += store.commit(run, seq, flush_for([rec], "m1", run)).done.num_rows
    out.put((name, got))


def test_two_writers_commit_at_once_and_never_double(s3_store):
    Store(s3_store).ensure()
    shared = [f"r{i}" for i in range(6)]  # both try these; exactly one may commit each
    ctx = mp.get_context("spawn")  # delta-rs's runtime does not survive fork
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(s3_store, n, shared + [f"{n}-{i}" for i in range(3)], out))
             for n in ("aaaaaa", "bbbbbb")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    committed = dict(out.get(timeout=5) for _ in procs)
    assert sum(committed.values()) == 6 + 2 * 3
    store = Store(s3_store)
    done = store.done_table()
    assert sorted(done["recording_id"]) == sorted(shared + [f"{n}-{i}" for n in ("aaaaaa", "bbbbbb") for i in range(3)])
    det = store.read_detections()
    assert len(det) == 2 * len(done)  # two rows per recording, never a second copy
    assert det.groupby("recording_id").size().eq(2).all()
    assert len(store.history()) >= 1 + len(done)  # one version per commit, plus the table's creation


def test_detect_summarize_query_and_sql_on_s3(s3_store, tmp_path):
    dump = make_dump(tmp_path / "dump", n_files=3)
    model = load_checkpoint(every_window_model(tmp_path / "model.pt"))
    store = Store(s3_store)
    result = scan(dump, store)
    report = run_detection(store, result.rows, model, DetectConfig(num_workers=0), progress=False)
    assert report.recordings_done == 3 and report.detections > 0
    again = run_detection(Store(s3_store), Store(s3_store).read_manifest(), model, DetectConfig(num_workers=0),
                          progress=False)
    assert again.recordings_done == 0 and again.recordings_skipped == 3

    store = Store(s3_store)
    det = store.read_detections()
    assert len(det) == report.detections and set(det["site"]) == {"AM01", "AM02"}
    assert store.read_run(report.run_id)["status"] == "completed"

    q = query_detections(store, sites="AM01")
    assert len(q.rows) == (det["site"] == "AM01").sum() > 0
    sql = run_sql(store, "SELECT site, count(*) AS n FROM detections GROUP BY site ORDER BY site")
    assert sql.set_index("site")["n"].to_dict() == det.groupby("site").size().to_dict()
    assert run_sql(store, "SELECT count(*) AS n FROM done")["n"].iloc[0] == 3
    assert run_sql(store, "SELECT count(*) AS n FROM recordings")["n"].iloc[0] == 3

    summary = summarize(store)
    hourly = store.read_summary("hourly_counts")
    assert hourly["detections"].sum() == len(det)
    assert store.location.exists("summaries/state.json") and store.location.list("summaries/occupancy")
    assert summarize(Store(s3_store)).full is False  # the state written to S3 is read back
    assert run_sql(store, "SELECT sum(detections) AS n FROM hourly_counts")["n"].iloc[0] == len(det)
    assert summary.tables["hourly_counts"]["detections"].sum() == len(det)


def test_compact_vacuum_and_time_travel_on_s3(s3_store):
    store = Store(s3_store).ensure()
    run = "20240601T000000Z-cccccc"
    for seq in range(3):
        rec = Rec(f"t{seq}", "A", "2024-05-01T05:00", 60, detections=[(1.0, "x", 0.9, "m1")])
        store.commit(run, seq, flush_for([rec], "m1", run))
    before = store.history()[0]["version"]
    assert store.compact().partitions == 2  # site A's month of detections, and its done files
    assert len(store.detection_files()) == 1 and len(store.read_detections()) == 3
    assert len(store.done_files()) == 1 and store.next_seq(run) == 3
    assert len(store.at(before).detection_files()) == 3  # the version before compaction still reads
    assert store.vacuum(retention_days=7) == []  # nothing is old enough yet
    assert store.recover(orphan_age_s=0) == 0


def test_what_needs_a_folder_says_so_on_object_storage(s3_store):
    from pam.analysis.review import import_review
    from pam.detect.registry import register
    from pam.store.migrate import migrate

    store = Store(s3_store)
    with pytest.raises(NotOnObjectStorage, match="pam review-import is not supported on object storage"):
        import_review(store, "unused.csv")
    with pytest.raises(NotOnObjectStorage, match="model registry"):
        register(s3_store, "unused.pt")
    with pytest.raises(NotOnObjectStorage, match="pam store migrate"):
        migrate("/nonexistent", s3_store)
    from pam.config import AgileConfig, ConfigError, DetectConfig, PamConfig
    from pam.ops.agile import plan_agile

    with pytest.raises(ConfigError, match="agile.similarity_index: .* is on object storage"):
        plan_agile(store, PamConfig(detect=DetectConfig(embeddings=True), agile=AgileConfig(similarity_index=True)))
    with pytest.raises(ConfigError, match="agile.heads: the head registry .* is not supported on object storage"):
        plan_agile(store, PamConfig(detect=DetectConfig(embeddings=True), agile=AgileConfig(heads="all")))


# -- the CLI on object storage (`--store s3://...`, STORE arguments as URIs) --------------------
runner = CliRunner()


def _cli(*args: str):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def test_cli_detect_query_summarize_sql_and_runs_on_s3(s3_store, tmp_path):
    dump = make_dump(tmp_path / "dump", n_files=3)
    model = every_window_model(tmp_path / "model.pt")
    out = _cli("detect", dump, "--store", s3_store, "--model", model, "--no-prefect", "--workers", "0", "--show", "3")
    assert re.search(r"run (\S+): 3 recordings scored .* 0 failed, (\d+) new detections$", out, re.M), out
    assert "no HTML report on object storage" not in out and "report:" not in out  # none is written there
    store = Store(s3_store)
    det = store.read_detections()
    assert f"{len(det)} new detections" in out and len(det) > 0

    _cli("query", s3_store, "--site", "AM01", "--out", tmp_path / "q.csv")
    assert len(pd.read_csv(tmp_path / "q.csv")) == (det["site"] == "AM01").sum() > 0
    _cli("sql", s3_store, "SELECT site, count(*) AS n FROM detections GROUP BY site ORDER BY site",
         "--out", tmp_path / "s.csv")
    assert pd.read_csv(tmp_path / "s.csv").set_index("site")["n"].to_dict() == det.groupby("site").size().to_dict()
    out = _cli("summarize", s3_store)
    assert f"summaries written to {s3_store}/summaries (incremental: 0 new done file(s)" in out  # detect summarised
    assert store.read_summary("hourly_counts")["detections"].sum() == len(det)
    _cli("export", s3_store, "--format", "csv", "--windows", "--out", tmp_path / "e.csv")
    assert len(pd.read_csv(tmp_path / "e.csv")) == len(det)
    out = _cli("report", s3_store, "--out", tmp_path / "report")  # read from S3, written to a folder here
    assert f"Store {s3_store} - " in (tmp_path / "report" / "report.html").read_text()
    assert int(re.search(r"\((\d+) figures\)", out)[1]) > 0

    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in _cli("runs", s3_store).splitlines()
            if "completed" in line]  # (the table folds long run ids)
    assert [r[3:5] for r in rows] == [["3/0/0", str(len(det))]]
    versions = _cli("store", "history", s3_store).splitlines()
    newest = store.history()
    assert len(versions) == len(newest) >= 2 and versions[0].split()[0] == str(newest[0]["version"])
    again = _cli("detect", dump, "--store", s3_store, "--model", model, "--no-prefect", "--workers", "0", "--show", "0")
    assert "0 recordings scored" in again and "3 already done" in again
    missing = runner.invoke(app, ["query", f"{s3_store}-nothing-here"])
    assert missing.exit_code == 2 and missing.output.strip() == f"error: store {s3_store}-nothing-here does not exist"


def test_two_cli_detect_processes_at_once_commit_each_recording_once(s3_store, s3_endpoint, tmp_path):
    # long enough (2 min of audio) that the second process plans before the first is done; both
    # then score what neither has committed yet, and race to commit it, one recording per commit
    dump = make_dump(tmp_path / "dump", n_files=6, seconds=20.0)
    model = every_window_model(tmp_path / "model.pt")
    (tmp_path / "flush.yaml").write_text("detect:\n  flush_every: 1\n")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": s3_endpoint, "AWS_ALLOW_HTTP": "true", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "pam.cli", "detect", str(dump), "--store", s3_store, "--model", str(model),
           "--no-prefect", "--workers", "0", "--show", "0", "--config", str(tmp_path / "flush.yaml")]
    procs = [subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]  # both on the same dump: each recording is offered twice
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    scored = [int(re.search(r"run \S+: (\d+) recordings scored", out)[1]) for out in outs]
    assert sum(scored) == 6, outs  # each recording counted by the one run that committed it
    store = Store(s3_store)
    done = store.done_table()
    assert sorted(done["recording_id"]) == sorted(store.read_manifest()["recording_id"]) and len(done) == 6
    det = store.read_detections()
    assert not det.duplicated(["recording_id", "model_id", "settings_hash", "start_sample", "label"]).any()
    assert det.groupby("recording_id").size().to_dict() == done.set_index("recording_id")["detections"].to_dict()
    runs = store.read_runs()
    assert set(runs["status"]) == {"completed"} and sorted(runs["recordings_done"]) == sorted(scored)


def test_cli_detect_through_the_prefect_flow_on_s3(s3_store, tmp_path, prefect_harness):
    dump = make_dump(tmp_path / "dump", n_files=2)
    model = every_window_model(tmp_path / "model.pt")
    out = _cli("detect", dump, "--store", s3_store, "--model", model, "--workers", "0", "--show", "0")
    assert "2 recordings scored" in out and "0 failed" in out, out
    store = Store(s3_store)
    runs = store.read_runs()
    assert len(runs) == 1 and runs.iloc[0]["status"] == "completed"
    det = store.read_detections()
    assert len(det) > 0 and store.read_summary("hourly_counts")["detections"].sum() == len(det)  # the summary task


def test_cli_commands_that_need_a_folder_refuse_object_storage_first(s3_store, tmp_path):
    review = tmp_path / "review.csv"
    review.write_text("verdict\n")
    train = tmp_path / "train.yaml"
    train.write_text(f"data: {{tables: [labels.csv]}}\noutput:\n  store: {s3_store}\n")
    for args in (["review-import", s3_store, review],
                 ["store", "migrate", tmp_path / "old", s3_store], ["models", s3_store],
                 ["similar", s3_store, "--at", "x@1"], ["train", train, "--no-prefect"]):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 2, (args, res.output)
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and re.match(rf"error: .* is not supported on object storage \({s3_store}\)", lines[0])
    assert not Store(s3_store).location.exists()  # nothing was written


def test_a_store_whose_endpoint_cannot_be_resolved_is_one_line(monkeypatch):
    """Opening an s3 store's file system already asks the network (the bucket's region): when that
    fails, the commands that read a store say so in one line, exit 2, instead of a traceback."""
    import pam.cli.app as cli_app

    def unreachable(root):
        raise OSError(f"When resolving region for bucket 'bucket': could not resolve host ({root})")

    monkeypatch.setattr(cli_app, "Store", unreachable)
    for args in (["query", "s3://bucket/x"], ["summarize", "s3://bucket/x"], ["apply-head", "s3://bucket/x", "h.npz"]):
        res = runner.invoke(app, args)
        lines = res.output.strip().splitlines()
        assert res.exit_code == 2 and len(lines) == 1, (args, res.output)
        assert lines[0].startswith("error: store s3://bucket/x: cannot reach it: When resolving region")
