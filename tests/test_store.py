import multiprocessing as mp
import threading
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

import pam.store.schemas as schemas
from pam.store.results import DETECTION_FILE, ResultsTable
from pam.store.store import Flush, Store, StoreBusy, new_run_id
from pam.store.transactions import DoneFiles

NOW = datetime(2024, 5, 1, tzinfo=timezone.utc)


def make_flush(recs: list[str], run: str, per_rec: int = 3, site: str = "A") -> Flush:
    det = {name: [] for name in schemas.DETECTIONS.names + ["site", "date"]}
    for r in recs:
        for k in range(per_rec):
            det["recording_id"].append(r)
            det["path"].append(f"/d/{r}.wav")
            det["device"].append(None)
            det["start_sample"].append(k * 100)
            det["start_s"].append(k * 1.0)
            det["end_s"].append(k + 3.0)
            det["start_time"].append(NOW)
            det["label"].append("a")
            det["score"].append(0.9)
            det["model_id"].append("m1")
            det["settings_hash"].append("s1")
            det["run_id"].append(run)
            det["site"].append(site)
            det["date"].append("2024-05-01")
    schema = pa.schema(list(schemas.DETECTIONS) + [pa.field("site", pa.string()), pa.field("date", pa.string())])
    done = [{"recording_id": r, "model_id": "m1", "settings_hash": "s1", "run_id": run, "site": site,
             "path": f"/d/{r}.wav", "windows": per_rec, "audio_s": 6.0, "detections": per_rec,
             "committed_at": NOW} for r in recs]
    return Flush(pa.table(det, schema=schema), pa.Table.from_pylist(done, schema=schemas.DONE))


def test_commit_makes_rows_visible_and_done(tmp_path):
    store = Store(tmp_path)
    run = new_run_id()
    store.commit(run, 0, make_flush(["r1", "r2"], run))
    det = store.read_detections()
    assert len(det) == 6 and set(det["site"]) == {"A"} and set(det["date"]) == {"2024-05-01"}
    assert store.done_keys("m1", "s1") == {"r1", "r2"}
    assert store.done_keys("m1", "other") == set()


def test_files_no_version_names_are_invisible_then_removed_once_old(tmp_path):
    store = Store(tmp_path).ensure()
    crashed = new_run_id()
    # a writer killed after writing its file, before the log's next version named it
    flush = make_flush(["r1"], crashed)
    orphan = store.results.write_file(flush.detections.drop_columns(["site"]).cast(DETECTION_FILE),
                                      "detection", "A", f"part-{crashed}-00000")
    orphan_path = store.results_dir / orphan.path
    assert orphan_path.exists() and store.read_detections().empty and store.done_table().empty
    run = new_run_id()
    store.commit(run, 0, make_flush(["r2"], run))
    assert store.recover() == 0 and orphan_path.exists()  # young: it may be a commit in flight elsewhere
    assert store.recover(orphan_age_s=0) == 1 and not orphan_path.exists()
    assert set(store.read_detections()["recording_id"]) == {"r2"}
    assert store.detection_files() and all(p.exists() for p in store.detection_files())


def test_temporary_files_are_never_read(tmp_path):
    store = Store(tmp_path)
    run = new_run_id()
    store.commit(run, 0, make_flush(["r1"], run))
    part = store.detection_files()[0]
    (part.parent / f".{part.name}.abcd1234.tmp").write_bytes(b"half a parquet file")
    (part.parent / "part-stray.parquet").write_bytes(b"not in the table's log")
    assert len(store.read_detections()) == 3


def test_second_commit_of_same_recording_is_dropped(tmp_path):
    store = Store(tmp_path)
    a, b = new_run_id(), new_run_id()
    store.commit(a, 0, make_flush(["r1", "r2"], a))
    committed = store.commit(b, 0, make_flush(["r2", "r3"], b))
    assert committed.done.column("recording_id").to_pylist() == ["r3"] and committed.superseded == 0
    det = store.read_detections()
    assert len(det) == 9
    assert det.groupby("recording_id")["run_id"].nunique().max() == 1


def test_concurrent_commits_never_double(tmp_path):
    store = Store(tmp_path)
    recs = [f"r{i}" for i in range(20)]
    errors = []

    def worker(k: int) -> None:
        try:
            run = new_run_id()
            for seq, start in enumerate(range(0, 20, 5)):
                Store(tmp_path).commit(run, seq, make_flush(recs[start:start + 5], run))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    det = store.read_detections()
    assert len(det) == 60
    assert not det.duplicated(["recording_id", "start_sample", "label"]).any()
    assert len(store.done_table()) == 20


def test_replace_supersedes_old_rows(tmp_path):
    store = Store(tmp_path)
    a, b = new_run_id(), new_run_id()
    store.commit(a, 0, make_flush(["r1", "r2"], a))
    store.commit(b, 0, make_flush(["r2"], b, per_rec=1), replace=True)
    det = store.read_detections()
    assert len(det[det["recording_id"] == "r2"]) == 1
    assert set(det[det["recording_id"] == "r2"]["run_id"]) == {b}
    assert len(det[det["recording_id"] == "r1"]) == 3
    done = store.done_table()
    assert sorted(zip(done["recording_id"], done["run_id"])) == [("r1", a), ("r2", b)]


def _retag(flush: Flush, column: str, mapping: dict) -> Flush:
    """The flush with ``column`` values swapped through ``mapping`` (in detections and done)."""
    def swap(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index(column)
        return t.set_column(i, t.schema.field(i), pa.array([mapping.get(v, v) for v in t.column(column).to_pylist()],
                                                            t.schema.field(i).type))
    return Flush(swap(flush.detections), swap(flush.done))


def test_new_settings_replace_the_same_models_rows_of_that_recording(tmp_path):
    store = Store(tmp_path)
    a, b = new_run_id(), new_run_id()
    store.commit(a, 0, make_flush(["r1", "r2"], a))  # settings s1
    result = store.commit(b, 0, _retag(make_flush(["r2"], b, per_rec=1), "settings_hash", {"s1": "s2"}))
    assert result.superseded == 1 and result.done.num_rows == 1
    det = store.read_detections()
    assert sorted(zip(det["recording_id"], det["settings_hash"])) == [("r1", "s1")] * 3 + [("r2", "s2")]
    done = store.done_table()
    assert sorted(zip(done["recording_id"], done["settings_hash"])) == [("r1", "s1"), ("r2", "s2")]
    # another model's rows of the same recording are its own and stay
    c = new_run_id()
    other = store.commit(c, 0, _retag(make_flush(["r2"], c, per_rec=2), "model_id", {"m1": "m2"}))
    assert other.superseded == 0
    assert sorted(store.read_detections().query("recording_id == 'r2'")["model_id"]) == ["m1", "m2", "m2"]


def test_a_rewritten_file_replaces_the_rows_of_its_old_content(tmp_path):
    store = Store(tmp_path)
    a, b = new_run_id(), new_run_id()
    store.commit(a, 0, make_flush(["r1", "r2"], a))
    # r2's file rewritten: same path /d/r2.wav, new content id r2b, analysed again
    rewritten = _retag(make_flush(["r2b"], b, per_rec=2), "path", {"/d/r2b.wav": "/d/r2.wav"})
    result = store.commit(b, 0, rewritten)
    assert result.superseded == 1
    det = store.read_detections()
    assert sorted(det["recording_id"]) == ["r1"] * 3 + ["r2b"] * 2
    assert sorted(store.done_table()["recording_id"]) == ["r1", "r2b"]


def _interrupt_commits(monkeypatch) -> list[str]:
    """Every transaction dies (power cut) just before its commit; returns the files it had written."""
    written = []

    def crash(self, dt, adds, removes, operation, data_change=True, details=None):
        written.extend(str(store_path(self, a.path)) for a in adds)
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(ResultsTable, "commit", crash)
    return written


def store_path(table: ResultsTable, rel: str):
    from pathlib import Path

    return Path(table.full_path(rel))


def test_retire_removes_every_models_rows_and_survives_a_crash(tmp_path, monkeypatch):
    store = Store(tmp_path)
    a, b = new_run_id(), new_run_id()
    store.commit(a, 0, make_flush(["r1", "r2"], a))
    store.commit(b, 0, _retag(make_flush(["r2"], b), "model_id", {"m1": "m2"}))
    before = store.snapshot().version()
    written = _interrupt_commits(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        store.retire(["r2"])
    monkeypatch.undo()
    # nothing changed: the crash came before the log named anything
    assert store.snapshot().version() == before
    assert sorted(store.done_table()["recording_id"]) == ["r1", "r2", "r2"]
    assert store.retire(["r2"]) == 2  # both models' done rows, in one transaction
    assert store.snapshot().version() == before + 1
    assert set(store.read_detections()["recording_id"]) == {"r1"}
    assert list(store.done_table()["recording_id"]) == ["r1"]
    assert store.retire(["r2"]) == 0  # nothing left to remove
    store.recover(orphan_age_s=0)
    assert not any(Path(p).exists() for p in written)


def test_replace_interrupted_before_its_commit_leaves_the_old_rows(tmp_path, monkeypatch):
    store = Store(tmp_path)
    a, b = new_run_id(), new_run_id()
    store.commit(a, 0, make_flush(["r1", "r2"], a))
    written = _interrupt_commits(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        store.commit(b, 0, make_flush(["r2"], b, per_rec=1), replace=True)
    monkeypatch.undo()
    det = store.read_detections()
    assert sorted(det[det["recording_id"] == "r2"]["run_id"]) == [a] * 3
    assert store.recover(orphan_age_s=0) == len(written) > 0  # the dead commit's files, named by no version
    assert not any(Path(p).exists() for p in written)
    store.commit(b, 0, make_flush(["r2"], b, per_rec=1), replace=True)
    det = store.read_detections()
    assert sorted(det[det["recording_id"] == "r2"]["run_id"]) == [b]
    assert len(store.done_table()) == 2


def test_an_earlier_version_still_reads_as_it_was(tmp_path):
    store = Store(tmp_path)
    a, b = new_run_id(), new_run_id()
    store.commit(a, 0, make_flush(["r1", "r2"], a))
    first = store.snapshot().version()
    store.commit(b, 0, make_flush(["r2"], b, per_rec=1), replace=True)
    old = store.read_detections(snap=store.snapshot(first))
    assert sorted(old[old["recording_id"] == "r2"]["run_id"]) == [a] * 3
    assert len(store.done_table(snap=store.snapshot(first))) == 2
    assert len(store.read_detections()) == 4


def _commit_in_child(root: str, recs: list[str], start) -> None:
    start.wait(30)
    store = Store(root)
    run = new_run_id()
    for seq in range(0, len(recs), 3):
        store.commit(run, seq, make_flush(recs[seq:seq + 3], run))


def test_writer_processes_commit_concurrently_without_a_lock_and_never_double(tmp_path):
    """Several processes commit overlapping recordings at once, with no lock: each recording
    is committed by exactly one of them (conflicts are detected and retried)."""
    ctx = mp.get_context("forkserver")  # delta-rs must not run in a forked child (docs/store.md)
    Store(tmp_path).ensure()
    recs = [f"r{i:02d}" for i in range(12)]
    start = ctx.Event()
    procs = [ctx.Process(target=_commit_in_child, args=(str(tmp_path), recs[k:] + recs[:k], start))
             for k in (0, 4, 8)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    store = Store(tmp_path)
    det = store.read_detections()
    assert len(det) == 3 * len(recs)
    assert det.groupby("recording_id")["run_id"].nunique().max() == 1
    done = store.done_table()
    assert sorted(done["recording_id"]) == recs


def test_lock_timeout_names_the_holder(tmp_path):
    store = Store(tmp_path)
    with store.lock(what="first"):
        with pytest.raises(StoreBusy, match="locked by another pam process"):
            # flock locks are per open file description, so a second open conflicts even in-process
            with Store(tmp_path).lock(timeout_s=0.2):
                pass


def test_site_names_with_odd_characters_round_trip(tmp_path):
    store = Store(tmp_path)
    run = new_run_id()
    site = "Ridge 2/north ünïcode"
    store.commit(run, 0, make_flush(["r1"], run, site=site))
    assert set(store.read_detections()["site"]) == {site}
    assert len(store.detection_files(sites=[site])) == 1
    assert store.detection_files(sites=["other"]) == []


def test_undated_recordings_land_in_the_unknown_partition_and_summaries_cope(tmp_path):
    """A file with no start time (no recorder name or header) has no UTC day; pandas hands the groupby
    key over as NaN, which once became a 'date=nan' folder that broke the nightly summary."""
    from pam.config import PamConfig
    from pam.analysis.summaries import summarize

    store = Store(tmp_path)
    run = new_run_id()
    flush = make_flush(["r1"], run)
    det = flush.detections.to_pydict()
    det["start_time"] = [None] * len(det["start_time"])
    det["date"] = [None] * len(det["date"])
    store.commit(run, 0, Flush(pa.table(det, schema=flush.detections.schema), flush.done))
    assert [p.parent.name for p in store.detection_files()] == ["month=unknown"]
    assert len(store.read_detections()) == 3 and set(store.read_detections()["date"]) == {"unknown"}
    summarize(store, PamConfig())  # the undated rows are counted apart, not parsed as a day


def test_commits_on_a_kept_snapshot_see_what_other_writers_did_since(tmp_path):
    """A caller that keeps one snapshot and one DoneFiles across its commits (pam apply-head)
    still sees a writer that committed or retired rows after the snapshot: nothing is doubled,
    and a retired recording can be committed again."""
    store = Store(tmp_path / "s").ensure()
    store.commit("20240501T000000Z-000000", 0, make_flush(["a"], "20240501T000000Z-000000"))
    snap, seen = store.snapshot(), DoneFiles()
    assert len(seen.rows(store.results, snap, ["m1"], ["recording_id", "path"])) == 1
    other = Store(tmp_path / "s")
    other.commit("20240501T000000Z-111111", 0, make_flush(["b", "c"], "20240501T000000Z-111111"))
    mine = store.commit("20240501T000000Z-222222", 0, make_flush(["c", "d"], "20240501T000000Z-222222"),
                        snap=snap, done_files=seen)
    assert mine.done.column("recording_id").to_pylist() == ["d"]  # c: committed meanwhile by the other writer
    again = store.commit("20240501T000000Z-222222", 1, make_flush(["d"], "20240501T000000Z-222222"),
                         snap=snap, done_files=seen)
    assert again.done.num_rows == 0  # its own commit before, read from the log's new entries
    assert other.retire(["a"]) == 1
    back = store.commit("20240501T000000Z-222222", 2, make_flush(["a"], "20240501T000000Z-222222"),
                        snap=snap, done_files=seen)
    assert back.done.column("recording_id").to_pylist() == ["a"]  # its old done file is no longer live
    done = store.done_table()
    assert sorted(done["recording_id"]) == ["a", "b", "c", "d"]
    det = store.read_detections()
    assert det.groupby("recording_id").size().to_dict() == {"a": 3, "b": 3, "c": 3, "d": 3}


def test_done_files_of_other_models_are_skipped_from_the_log_without_opening_them(tmp_path, monkeypatch):
    """Each done file's first and last model id go into the log's statistics, so a reader of one
    model's done rows (apply-head's plan and commits, done_table(model_id=...), a commit's check)
    does not open the files of the other models: the number of files opened stays that of its
    own model however many heads a store has applied."""
    store = Store(tmp_path / "s").ensure()
    for i, model in enumerate(["m1", "m2", "m3"]):
        flush = make_flush([f"r{i}"], f"2024050{i}T000000Z-000000")
        done = flush.done.set_column(flush.done.schema.get_field_index("model_id"), "model_id",
                                     pa.array([model] * flush.done.num_rows))
        store.commit(f"2024050{i}T000000Z-000000", 0, Flush(flush.detections.slice(0, 0), done))
    files = ResultsTable.files(store.snapshot(), "done")
    assert sorted(f.models for f in files) == [("m1", "m1"), ("m2", "m2"), ("m3", "m3")]
    opened = []
    real = ResultsTable.dataset

    def dataset(self, files, kind):
        opened.extend(f.path for f in files)
        return real(self, files, kind)

    monkeypatch.setattr(ResultsTable, "dataset", dataset)
    m2 = next(f.path for f in files if f.models == ("m2", "m2"))
    assert DoneFiles().rows(store.results, store.snapshot(), ["m2"])["recording_id"].tolist() == ["r1"]
    assert opened == [m2]
    opened.clear()
    assert store.done_table(model_id="m2")["recording_id"].tolist() == ["r1"] and opened == [m2]
    opened.clear()
    assert len(store.done_table()) == 3 and len(opened) == 3  # no model asked: every file
