"""`pam store migrate OLD NEW`: a store of the folder layout becomes a results-table store without loss."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from folderstore import write_flush, write_parts, write_replace_journal
from pam.cli.main import app
from pam.store.migrate import MigrationError, migrate
from pam.store.store import OldLayoutError, Store
from pamstore import Rec, flush_for, manifest_frame

SITES = ["S1", "Ridge 2/north"]
A, B, C = "20240502T020000Z-aaaaaa", "20240503T020000Z-bbbbbb", "20240504T020000Z-cccccc"


def recordings() -> list[Rec]:
    recs = []
    for s, site in enumerate(SITES):
        for day in range(1, 4):
            dets = [(60.0 * k, "owl" if k % 2 else "wren", 0.6 + 0.03 * k, "m1") for k in range(5)]
            recs.append(Rec(f"r{s}-{day}", site, f"2024-05-0{day}T23:58", 600, detections=dets))
    return recs


def old_store(root):
    """Two committed runs, an uncommitted part (crash before done), a --force commit whose
    journal was never applied, and every other table a store holds."""
    recs = recordings()
    write_flush(root, A, 0, flush_for(recs[:3], "m1", A))
    write_flush(root, A, 1, flush_for(recs[3:], "m1", A))
    write_parts(root, C, 0, flush_for(recs[:1], "m1", C).detections)  # never committed: never visible
    forced = flush_for(recs[1:2], "m1", B)
    write_flush(root, B, 0, forced)
    write_replace_journal(root, B, 0, [(recs[1].rid, "m1", "s1", A)])  # A's rows of r0-2 still on disk
    store = Store(root)
    store.runs_dir.mkdir(parents=True, exist_ok=True)
    store.write_manifest(manifest_frame(recs))
    store.write_run({"run_id": A, "started_at": None})
    (root / "summaries" / "effort").mkdir(parents=True)
    (root / "summaries" / "effort" / "effort.parquet").write_bytes(b"PAR1 stand-in")
    (root / "labels").mkdir()
    (root / "labels" / "training_labels.csv").write_text("clip,label\n")
    (root / ".run.lock").write_text("pid 1 on host: old run")
    return recs


def expected_detections(recs) -> pd.DataFrame:
    """What the folder store's readers showed: A's rows except r0-2 (replaced by B), and B's."""
    a = pd.concat([flush_for(recs[:3], "m1", A).detections.to_pandas(), flush_for(recs[3:], "m1", A).detections.to_pandas()])
    a = a[a["recording_id"] != recs[1].rid]
    return pd.concat([a, flush_for(recs[1:2], "m1", B).detections.to_pandas()])


def canon(frame: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    return frame[sorted(frame.columns)].sort_values(key).reset_index(drop=True)


def test_migrate_keeps_every_table(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    recs = old_store(old)
    before = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    result = migrate(old, new)
    assert {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()} == before  # only read
    store = Store(new)
    key = ["recording_id", "start_sample", "label", "model_id"]
    got = store.read_detections()
    want = expected_detections(recs)
    pd.testing.assert_frame_equal(canon(got, key), canon(want[got.columns], key), check_dtype=False)
    done = store.done_table()
    want_done = pd.concat([flush_for(recs[:3], "m1", A).done.to_pandas(), flush_for(recs[3:], "m1", A).done.to_pandas()])
    want_done = pd.concat([want_done[want_done["recording_id"] != recs[1].rid],
                           flush_for(recs[1:2], "m1", B).done.to_pandas()])
    assert done["commit_seq"].notna().all()  # from the old done file names (compaction keeps it in the rows)
    pd.testing.assert_frame_equal(canon(done.drop(columns="commit_seq"), ["recording_id", "run_id"]),
                                  canon(want_done.drop(columns="commit_seq"), ["recording_id", "run_id"]))
    assert (result.detection_rows, result.done_rows) == (len(want), len(want_done))
    pd.testing.assert_frame_equal(store.read_manifest(), Store(old).read_manifest())
    pd.testing.assert_frame_equal(store.read_runs(), pq.read_table(old / "runs" / f"run-{A}.parquet").to_pandas())
    for rel in ("summaries/effort/effort.parquet", "labels/training_labels.csv", "manifest/manifest.parquet"):
        assert (new / rel).read_bytes() == (old / rel).read_bytes()
    assert not (new / ".run.lock").exists() and not list(new.glob(".replace-*"))
    # written already compacted: one detection file per site and month, rows sorted by time,
    # and one done file per site (so a migrated season opens and scans like a compacted one)
    files = store.detection_files()
    assert len(files) == 2 and {p.parent.name for p in files} == {"month=2024-05"}
    for f in files:
        times = pq.read_table(f, columns=["start_time"]).column("start_time").to_pylist()
        assert times == sorted(times) and len(times) > 5
    assert len(list((new / "results").glob("kind=done/*/*.parquet"))) == 2
    # the migration's one large commit is checkpointed, so readers need not parse its JSON
    assert (new / "results" / "_delta_log" / "_last_checkpoint").is_file()
    # the migrated store goes on: commit numbers continue, and a rerun finds the work done
    assert store.next_seq(A) == 2 and store.done_keys("m1", "s1") == {r.rid for r in recs}
    assert set(store.read_detections()["site"]) == set(SITES)


def test_an_old_store_is_refused_with_the_command_that_converts_it(tmp_path):
    old_store(tmp_path / "old")
    with pytest.raises(OldLayoutError, match="pam store migrate"):
        Store(tmp_path / "old").read_detections()
    with pytest.raises(MigrationError, match="not empty"):
        (tmp_path / "full").mkdir()
        (tmp_path / "full" / "x").write_text("")
        migrate(tmp_path / "old", tmp_path / "full")
    res = CliRunner().invoke(app, ["store", "migrate", str(tmp_path / "old"), str(tmp_path / "new")])
    assert res.exit_code == 0, res.output
    assert "migrated" in res.output
    res = CliRunner().invoke(app, ["store", "migrate", str(tmp_path / "new"), str(tmp_path / "again")])
    assert res.exit_code == 2 and "needs no migration" in res.output


def date_partitioned_store(root):
    """A store as pam wrote it with the results table partitioned by (kind, site, date): detection
    files without a date column, done files without commit numbers."""
    import json
    import os
    import time

    import pyarrow as pa
    from deltalake import DeltaTable
    from deltalake.transaction import AddAction, CommitProperties

    import pam.store.schemas as schemas

    recs = recordings()
    table = root / "results"
    columns = [f.with_nullable(True) for f in list(schemas.DETECTIONS) + [f for f in schemas.DONE
                                                                         if f.name not in ("site", "commit_seq")]]
    unique = list({f.name: f for f in columns}.values())
    schema = pa.schema(unique + [pa.field(p, pa.string()) for p in ("kind", "site", "date")])
    DeltaTable.create(str(table), schema=schema, partition_by=["kind", "site", "date"], name="results")
    adds = []

    def add(rel, rows, values):
        os.makedirs(os.path.dirname(table / rel), exist_ok=True)
        pq.write_table(rows, table / rel)
        adds.append(AddAction(rel, os.path.getsize(table / rel), values, int(time.time() * 1000), True,
                              json.dumps({"numRecords": rows.num_rows})))

    flush = flush_for(recs, "m1", A)
    det = flush.detections.to_pandas()
    for (site, day), group in det.groupby(["site", "date"]):
        rows = pa.Table.from_pandas(group.drop(columns=["site", "date"]), schema=schemas.DETECTIONS, preserve_index=False)
        add(f"kind=detection/site={site.replace('/', '%2F').replace(' ', '%20')}/date={day}/part-{A}-00000-1234abcd.parquet",
            rows, {"kind": "detection", "site": site, "date": day})
    done = flush.done.to_pandas().drop(columns="commit_seq")
    for site, group in done.groupby("site"):
        rows = pa.Table.from_pandas(group, preserve_index=False)
        add(f"kind=done/site={site.replace('/', '%2F').replace(' ', '%20')}/done-{A}-00000-1234abcd.parquet",
            rows, {"kind": "done", "site": site, "date": None})
    DeltaTable(str(table)).create_write_transaction(adds, "append", schema, partition_by=["kind", "site", "date"],
                                                    commit_properties=CommitProperties(max_commit_retries=0))
    Store(root).write_manifest(manifest_frame(recs))
    return recs


def test_a_date_partitioned_results_table_is_refused_then_migrated(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    recs = date_partitioned_store(old)
    with pytest.raises(OldLayoutError, match=f"pam store migrate {old} NEW_FOLDER"):
        Store(old).read_detections()
    res = CliRunner().invoke(app, ["store", "migrate", str(old), str(new)])
    assert res.exit_code == 0, res.output
    store = Store(new)
    key = ["recording_id", "start_sample", "label", "model_id"]
    want = flush_for(recs, "m1", A).detections.to_pandas()
    got = store.read_detections()
    pd.testing.assert_frame_equal(canon(got, key), canon(want[got.columns], key), check_dtype=False)
    assert set(store.done_table()["commit_seq"]) == {0} and len(store.done_table()) == len(recs)
    assert {p.parent.name for p in store.detection_files()} == {"month=2024-05"}
    assert store.next_seq(A) == 1  # the commit numbers of the old done file names
    assert store.compact().partitions == 2 and len(store.read_detections()) == len(want)  # one month a site
