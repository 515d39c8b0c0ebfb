"""Versions of the results table: --as-of reads, compaction that keeps every row, retention."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from pam.analysis.summaries import summarize
from pam.cli.main import app
from pam.config import PamConfig
from pam.ops.pipeline import maintain_store
from pam.store.query import query_detections, run_sql
from pam.store.store import Store
from pamstore import Rec, commit, manifest_frame

KEY = ["recording_id", "start_sample", "label", "model_id"]


def night(n: int) -> list[Rec]:
    """Recordings of night ``n`` at two sites; each site-day partition gets files from several nights."""
    recs = []
    for site in ("S1", "S2"):
        for h in range(3):
            dets = [(30.0 * k + n, "owl" if k % 2 else "wren", 0.55 + 0.05 * k, "m1") for k in range(4)]
            recs.append(Rec(f"{site}-n{n}-{h}", site, f"2024-05-01T{2 * h + n:02d}:10", 300, detections=dets))
    return recs


def store_of_nights(root, nights: int) -> Store:
    store = Store(root).ensure()
    everything = [r for n in range(nights) for r in night(n)]
    store.write_manifest(manifest_frame(everything))
    for n in range(nights):
        commit(store, night(n))
    return store


def rows(store: Store) -> pd.DataFrame:
    return store.read_detections().sort_values(KEY).reset_index(drop=True)


def test_compaction_keeps_every_row_and_the_done_keys(tmp_path):
    store = store_of_nights(tmp_path, 3)
    before, files_before = rows(store), store.detection_files()
    done_files = store.done_files()
    done_before = store.done_table().sort_values("recording_id").reset_index(drop=True)
    version = store.snapshot().version()
    result = store.compact()
    # two site-months of detections and two sites' done files, each merged into one file
    assert result.partitions == 4 and len(files_before) == len(done_files) == 6
    assert result.files_before == 12 and result.rows == len(before) + len(done_before)
    assert len(store.detection_files()) == 2 and len(store.done_files()) == 2
    pd.testing.assert_frame_equal(rows(store), before)
    pd.testing.assert_frame_equal(store.done_table().sort_values("recording_id").reset_index(drop=True), done_before)
    assert store.done_keys("m1", "s1") == {r.rid for n in range(3) for r in night(n)}
    q = dict(species="owl", sites="S2", start="2024-05-01", end="2024-05-01")
    assert len(query_detections(store, **q).rows) == len(query_detections(store.at(version), **q).rows) > 0
    assert store.compact().partitions == 0  # nothing left to do
    # the files compaction replaced stay for time travel until the retention has passed
    assert store.vacuum(retention_days=7) == []
    pd.testing.assert_frame_equal(rows(store.at(version)), before)
    assert sorted(store.vacuum(retention_days=0)) == sorted(p.relative_to(store.results_dir).as_posix()
                                                            for p in files_before + done_files)
    pd.testing.assert_frame_equal(rows(store), before)


def test_summaries_stay_right_when_compaction_comes_before_them(tmp_path):
    store = store_of_nights(tmp_path, 1)
    conf = PamConfig()
    summarize(store, conf)
    commit(store, night(1))
    store.compact()  # night 1's files merged before the summaries counted them
    summarize(store, conf)
    incremental = store.read_summary("hourly_counts")
    summarize(store, conf, full=True)
    pd.testing.assert_frame_equal(incremental, store.read_summary("hourly_counts"))
    assert incremental["detections"].sum() == 2 * len(night(0)) * 4


def test_the_nightly_upkeep_compacts_and_keeps_the_retention(tmp_path):
    store = store_of_nights(tmp_path, 2)
    before = rows(store)
    maintain_store(store, PamConfig.model_validate({"store": {"retention_days": 7}}))
    assert len(store.detection_files()) == 2
    assert [h["operation"] for h in store.history() if not h["operation"].startswith("VACUUM")][0] == "compact"
    old_files = [p for p in (store.results_dir / "kind=detection").rglob("part-*.parquet")]
    assert len(old_files) == 4  # removed from the table, kept for 7 days
    maintain_store(store, PamConfig.model_validate({"store": {"compact": False, "retention_days": 0}}))
    assert not any(p.exists() for p in old_files)
    pd.testing.assert_frame_equal(rows(store), before)


def test_query_and_sql_as_of_an_earlier_version(tmp_path):
    store = store_of_nights(tmp_path, 1)
    first = store.snapshot().version()
    commit(store, night(1))
    runner = CliRunner()
    res = runner.invoke(app, ["query", str(tmp_path), "--as-of", str(first), "--limit", "0"])
    assert res.exit_code == 0, res.output
    assert f"{len(night(0)) * 4} detections match" in res.output
    res = runner.invoke(app, ["query", str(tmp_path), "--limit", "0"])
    assert f"{2 * len(night(0)) * 4} detections match" in res.output
    sql = "SELECT (SELECT count(*) FROM detections) AS d, (SELECT count(*) FROM done) AS n"
    assert run_sql(store.at(first), sql).iloc[0].tolist() == [len(night(0)) * 4, len(night(0))]
    assert run_sql(store, sql).iloc[0].tolist() == [2 * len(night(0)) * 4, 2 * len(night(0))]
    res = runner.invoke(app, ["sql", str(tmp_path), sql, "--as-of", str(first), "--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 0, res.output
    assert pd.read_csv(tmp_path / "o.csv").iloc[0].tolist() == [len(night(0)) * 4, len(night(0))]
    res = runner.invoke(app, ["query", str(tmp_path), "--as-of", "0"])  # the table's creation: no rows yet
    assert res.exit_code == 0 and "held no detections at version 0" in res.output, res.output
    res = runner.invoke(app, ["query", str(tmp_path), "--as-of", "99"])
    assert res.exit_code == 2 and "has no version 99" in res.output
    res = runner.invoke(app, ["query", str(tmp_path), "--as-of", "1999-01-01T00:00"])
    assert res.exit_code == 2 and "has no version at 1999-01-01" in res.output
    res = runner.invoke(app, ["store", "history", str(tmp_path)])
    assert res.exit_code == 0 and "commit" in res.output
    newest = store.history()[0]  # the second night's one commit: its run and what it added
    assert newest["operation"] == "commit" and newest["run_id"]
    assert (newest["recordings"], newest["detections"]) == (len(night(1)), len(night(1)) * 4)
    assert newest["models"] == "m1"
    assert f"run {newest['run_id']} (model m1): {len(night(1))} recordings, {len(night(1)) * 4} detections" \
        in res.output


def season(root, days: int = 20) -> Store:
    """Two sites, one recording a night over ``days`` nights (crossing a month), one flush a night."""
    store = Store(root).ensure()
    recs = []
    for d in range(days):
        when = pd.Timestamp("2024-05-20T12:00") + pd.Timedelta(days=d)
        for site in ("S1", "S2"):
            dets = [(60.0 * k, "owl" if k % 2 else "wren", 0.6 + 0.03 * k, "m1") for k in range(5)]
            recs.append(Rec(f"{site}-d{d}", site, when.strftime("%Y-%m-%dT%H:%M"), 600, detections=dets))
    store.write_manifest(manifest_frame(recs))
    for d in range(days):
        commit(store, recs[2 * d:2 * d + 2])
    return store


def test_compaction_merges_a_sites_month_into_one_file_and_the_week_reads_the_same(tmp_path):
    store = season(tmp_path)
    before = rows(store)
    week = dict(sites="S2", start="2024-05-28", end="2024-06-03")
    asked = query_detections(store, **week)
    # before compaction: one file per site and UTC day; the week opens its own 7 days only
    assert len(asked.files) == 7 and len(store.detection_files()) == 2 * 20
    assert len(store.done_files()) == 2 * 20
    result = store.compact()
    assert result.rows == len(before) + 40
    # one file per site and UTC month (May, June), one done file per site
    assert len(store.detection_files()) == 4 and len(store.done_files()) == 2
    assert sorted(p.parent.name for p in store.detection_files(sites=["S1"])) == ["month=2024-05", "month=2024-06"]
    pd.testing.assert_frame_equal(rows(store), before)
    again = query_detections(store, **week)
    assert len(again.files) == 2 and len(again.rows) > 0
    pd.testing.assert_frame_equal(again.rows, asked.rows)
    # the log's statistics still prune: a week inside May opens May's file only
    assert [p.parent.name for p in query_detections(store, sites="S2", start="2024-05-21", end="2024-05-27").files] \
        == ["month=2024-05"]
    # the compacted file is sorted by time, and a checkpoint was written for the next open
    merged = store.read_detections()
    assert merged[merged["site"] == "S1"]["start_time"].is_monotonic_increasing
    assert list((store.results_dir / "_delta_log").glob("*.checkpoint.parquet"))
    # the commit numbers live on in the done rows: summaries and next_seq need no file names
    assert sum(store.committed_flushes().values()) == 40 and len(store.committed_flushes()) == 20


def test_a_replacement_after_compaction_rewrites_the_compacted_file(tmp_path):
    store = season(tmp_path, days=4)
    store.compact()
    target = "S1-d1"
    from pamstore import flush_for
    from pam.store.store import new_run_id

    recs = [r for r in [Rec(target, "S1", "2024-05-21T12:00", 600, detections=[(1.0, "owl", 0.9, "m1")])]]
    run = new_run_id()
    store.commit(run, 0, flush_for(recs, "m1", run), replace=True)  # --force of one recording
    det = store.read_detections()
    assert (det["recording_id"] == target).sum() == 1 and len(det) == 4 * 2 * 5 - 5 + 1
    assert (store.done_table()["recording_id"] == target).sum() == 1
    assert store.next_seq(run) == 1


def test_compaction_beside_a_writer_loses_and_doubles_nothing(tmp_path):
    import threading

    store = season(tmp_path, days=6)
    extra = []
    for d in range(6, 16):
        when = pd.Timestamp("2024-05-20T12:00") + pd.Timedelta(days=d)
        extra.append([Rec(f"S1-d{d}", "S1", when.strftime("%Y-%m-%dT%H:%M"), 600,
                          detections=[(60.0 * k, "owl", 0.7, "m1") for k in range(5)])])
    errors = []

    def compactor():
        try:
            for _ in range(6):
                Store(tmp_path).compact()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=compactor)
    thread.start()
    for recs in extra:
        commit(Store(tmp_path), recs)
    thread.join()
    assert not errors
    det = rows(store)
    assert len(det) == 6 * 2 * 5 + 10 * 5 and not det.duplicated(KEY).any()
    assert len(store.done_table()) == 6 * 2 + 10 and not store.done_table()["recording_id"].duplicated().any()


def test_summaries_do_not_recount_after_a_compaction(tmp_path):
    store = season(tmp_path, days=4)
    conf = PamConfig()
    summarize(store, conf)
    counted = store.read_summary("hourly_counts")
    assert store.compact().partitions == 4  # both sites' detections and done files merged
    again = summarize(store, conf)
    assert not again.full and again.new_done_files == 0  # the flushes and their done rows are unchanged
    pd.testing.assert_frame_equal(store.read_summary("hourly_counts"), counted)
