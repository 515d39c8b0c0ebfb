"""A store on object storage (``s3://bucket/pam``) against a local S3 server (moto, started here
on 127.0.0.1 with a free port): detect, summarize, query and sql; two writers committing at once."""

import multiprocessing as mp
import socket
import subprocess
import sys
import time

import pytest

moto = pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
boto3 = pytest.importorskip("boto3")

from models import every_window_model  # noqa: E402
from pam.analysis.summaries import summarize  # noqa: E402
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
