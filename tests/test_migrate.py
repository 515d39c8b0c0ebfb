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
    pd.testing.assert_frame_equal(canon(done, ["recording_id", "run_id"]), canon(want_done, ["recording_id", "run_id"]))
    assert (result.detection_rows, result.done_rows) == (len(want), len(want_done))
    pd.testing.assert_frame_equal(store.read_manifest(), Store(old).read_manifest())
    pd.testing.assert_frame_equal(store.read_runs(), pq.read_table(old / "runs" / f"run-{A}.parquet").to_pandas())
    for rel in ("summaries/effort/effort.parquet", "labels/training_labels.csv", "manifest/manifest.parquet"):
        assert (new / rel).read_bytes() == (old / rel).read_bytes()
    assert not (new / ".run.lock").exists() and not list(new.glob(".replace-*"))
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
    assert res.exit_code == 2 and "not a store of the folder layout" in res.output
