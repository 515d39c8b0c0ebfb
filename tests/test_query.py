"""Filtered queries read only the files that can match, and give the same rows as a brute-force filter."""

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pam.store
from pamstore import Rec, build
from pam.analysis.events import query_events
from pam.store.query import QueryError, full_scan, query_detections, run_sql
from pam.store.species import UnknownSpecies
from pam.analysis.summaries import summarize

SITES = ["S1", "Ridge 2/north", "S3"]


def season() -> list[Rec]:
    recs = []
    for s, site in enumerate(SITES):
        for day in range(1, 15):
            dets = [(120.0 * k, "owl" if (k + day + s) % 3 else "wren", 0.51 + 0.04 * k, "m1") for k in range(10)]
            dets.append((700.0, "owl", 0.95, "m2"))
            recs.append(Rec(f"r{s}-{day}", site, f"2024-05-{day:02d}T23:50", 3600, scored_by=("m1", "m2"),
                            detections=dets))
    return recs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build(tmp_path_factory.mktemp("q") / "store", season())


def brute(store, species=None, site=None, t0=None, t1=None, min_score=None, model=None) -> pd.DataFrame:
    det = store.read_detections()
    keep = pd.Series(True, index=det.index)
    if species:
        keep &= det["label"] == species
    if site:
        keep &= det["site"] == site
    if t0:
        keep &= det["start_time"] >= pd.Timestamp(t0, tz="UTC")
    if t1:
        keep &= det["start_time"] < pd.Timestamp(t1, tz="UTC")
    if min_score is not None:
        keep &= det["score"] >= min_score
    if model:
        keep &= det["model_id"] == model
    return det[keep]


def key(frame: pd.DataFrame) -> list[tuple]:
    return sorted(zip(frame["recording_id"], frame["start_sample"], frame["label"], frame["model_id"]))


def test_one_site_one_week_reads_only_its_files(store):
    res = query_detections(store, species="owl", sites="Ridge 2/north", start="2024-05-03", end="2024-05-09")
    # recordings start 23:50 UTC, so each one writes into its own UTC date and the next
    # one file per site and UTC day (in the month's partition) until compaction merges them
    site_files = store.detection_files(sites=["Ridge 2/north"])
    assert {f.parent.name for f in res.files} == {"month=2024-05"} and len(res.files) < len(site_files)
    days = {d for f in res.files for d in pq.read_table(f, columns=["date"]).column("date").to_pylist()}
    assert days == {f"2024-05-{d:02d}" for d in range(3, 10)}  # chosen by each file's dates in the log
    assert {f.parent.parent.name for f in res.files} == {"site=Ridge%202%2Fnorth"}
    expected = brute(store, "owl", "Ridge 2/north", "2024-05-03", "2024-05-10")
    assert len(expected) > 0 and key(res.rows) == key(expected)
    assert res.rows["start_time"].is_monotonic_increasing


def test_full_scan_baseline_agrees(store):
    question = dict(species="wren", sites="S3", start="2024-05-04T12:00", end="2024-05-08", min_score=0.6)
    pruned = query_detections(store, **question).rows
    full = full_scan(store, **question)
    assert len(full) > 0 and key(full) == key(pruned)
    assert full["start_time"].tolist() == pruned["start_time"].tolist()


def test_full_scan_reads_strings_as_dictionaries_and_returns_plain_columns(store):
    table = store.detections_dataset(dictionary_strings=True).to_table()
    assert pa.types.is_dictionary(table.schema.field("label").type)
    assert table.num_rows == len(store.read_detections())
    model = table.column("model_id")[0].as_py()
    full = full_scan(store, sites=["S3", "Ridge 2/north"], model_id=model)
    expected = pd.concat([brute(store, site="S3", model=model), brute(store, site="Ridge 2/north", model=model)])
    assert len(full) > 0 and key(full) == key(expected)
    assert full.columns.tolist() == store.read_detections().columns.tolist()
    assert not any(isinstance(t, pd.CategoricalDtype) for t in full.dtypes)
    with pytest.raises(UnknownSpecies, match="dodo"):
        full_scan(store, species="dodo")


def test_pruned_files_are_never_opened(store, tmp_path):
    import shutil

    copy = pam.store.open(shutil.copytree(store.root, tmp_path / "copy"))
    wanted = set(query_detections(copy, sites="S3", start="2024-05-05", end="2024-05-05").files)
    for f in copy.detection_files():
        if f not in wanted:
            f.write_bytes(b"not parquet: opening this file would fail")
    res = query_detections(copy, species="wren", sites="S3", start="2024-05-05", end="2024-05-05")
    assert key(res.rows) == key(brute(store, "wren", "S3", "2024-05-05", "2024-05-06"))
    with pytest.raises(Exception):
        copy.read_detections()  # a full read does touch the broken files


def test_time_score_and_model_filters(store):
    t0, t1 = datetime(2024, 5, 7, 0, 0, tzinfo=timezone.utc), "2024-05-07T00:05:00"
    res = query_detections(store, start=t0, end=t1, min_score=0.7, model_id="m1")
    expected = brute(store, None, None, "2024-05-07T00:00", "2024-05-07T00:05", 0.7, "m1")
    assert len(expected) > 0 and key(res.rows) == key(expected)
    m2 = query_detections(store, model_id="m2").rows
    assert len(m2) == len(SITES) * 14 and m2["score"].astype(float).round(2).eq(0.95).all()


def test_min_score_keeps_a_score_equal_to_it(store):
    day = dict(sites="S1", start="2024-05-02", end="2024-05-02", model_id="m1")
    stored = query_detections(store, **day).rows["score"]
    at = stored == np.float32(0.63)  # stored as float32 0.63, which is below the double 0.63
    assert at.sum() == 1 and float(stored[at].iloc[0]) < 0.63
    kept = query_detections(store, min_score=0.63, **day).rows["score"]
    assert len(kept) == int((stored >= stored[at].iloc[0]).sum()) and kept.min() == stored[at].iloc[0]


def test_limit_keeps_the_earliest(store):
    rows = query_detections(store, sites=["S1"], limit=5).rows
    all_s1 = brute(store, site="S1").sort_values(["start_time", "label"])
    assert len(rows) == 5
    assert list(rows["start_time"]) == list(all_s1["start_time"].head(5))


def test_unknown_species_is_one_line_naming_the_known_ones(store):
    from pam.store.species import UnknownSpecies

    with pytest.raises(UnknownSpecies) as err:
        query_detections(store, species="dodo")
    assert "\n" not in str(err.value) and "'dodo'" in str(err.value) and "known: owl, wren" in str(err.value)
    with pytest.raises(UnknownSpecies, match=r"'owls' \(closest: owl\)"):
        query_detections(store, species=["wren", "owls"])


def test_species_known_elsewhere_is_empty_with_a_note(store):
    res = query_detections(store, species="OWL", sites="S1", start="2024-05-20")  # after the season: no files
    assert res.rows.empty and res.notes == ["no detection files for these sites and dates (sites asked: S1)"]
    res = query_detections(store, species="OWL", sites="S1", min_score=0.99)
    assert res.rows.empty and res.notes == ["no detections of OWL match these filters"]


def test_unknown_site_or_model_is_empty_with_a_note_naming_what_exists(store):
    res = query_detections(store, sites="s1")  # sites are case-sensitive
    assert res.rows.empty and "no detections at site(s) s1" in res.notes[0] and "S1" in res.notes[0]
    res = query_detections(store, model_id="m9")
    assert res.rows.empty and res.notes == ["no detections by model m9 (models in the store: m1, m2)"]


def test_bad_input_is_one_clear_line(store, tmp_path):
    with pytest.raises(QueryError, match="--start '2024-13-45' is not a date"):
        query_detections(store, start="2024-13-45")
    with pytest.raises(QueryError, match="is not after"):
        query_detections(store, start="2024-05-09", end="2024-05-01")
    with pytest.raises(QueryError, match="does not exist"):
        query_detections(pam.store.open(tmp_path / "nope"))


def test_sql_views(store):
    summarize(store)
    out = run_sql(store, "SELECT site, count(*) AS n FROM detections WHERE model_id = 'm2' GROUP BY site ORDER BY site")
    assert out.to_dict("list") == {"site": sorted(SITES), "n": [14, 14, 14]}
    rec = run_sql(store, "SELECT count(*) AS n FROM recordings")
    assert int(rec["n"][0]) == len(SITES) * 14
    days = run_sql(store, "SELECT count(*) AS n FROM site_days WHERE surveyed")
    assert int(days["n"][0]) == len(store.read_summary("site_days"))
    joined = run_sql(store, "SELECT count(*) AS n FROM detections d JOIN recordings r USING (recording_id)")
    assert int(joined["n"][0]) == len(store.read_detections())
    with pytest.raises(QueryError, match="SQL error"):
        run_sql(store, "SELECT nope FROM detections")


def test_sql_names_the_tables_when_one_does_not_exist(tmp_path):
    empty = pam.store.open(tmp_path / "s").ensure()
    with pytest.raises(QueryError) as e:
        run_sql(empty, "SELECT count(*) FROM detection")
    message = str(e.value)
    assert message.startswith("SQL error: no table detection (did you mean detections?); the store's tables: ")
    listed = message.split("the store's tables: ")[1].split(", ")
    assert {"detections", "recordings", "done", "runs", "verified", "failures", "daily_counts", "site_days"} <= set(listed)
    assert not [t for t in listed if t.startswith(("_", "pg_", "sqlite_", "duckdb_"))]
    for name in listed:  # every table named can be queried
        run_sql(empty, f'SELECT * FROM "{name}" LIMIT 0')
    with pytest.raises(QueryError, match=r"^SQL error: no table zzz; the store's tables: "):
        run_sql(empty, "SELECT * FROM zzz")


def test_sql_on_an_empty_store(tmp_path):
    empty = pam.store.open(tmp_path / "s").ensure()
    assert int(run_sql(empty, "SELECT count(*) AS n FROM detections")["n"][0]) == 0
    assert list(run_sql(empty, "SELECT * FROM daily_counts").columns)[:2] == ["site", "local_date"]


@pytest.fixture(scope="module")
def calls(tmp_path_factory):
    """Overlapping windows: two owl calls and one wren call in one recording, a second model beside."""
    recs = [Rec("rc", "S1", "2024-05-01T05:00", 600, scored_by=("m1", "m2"),
                detections=[(1.5, "owl", 0.6, "m1"), (3.0, "owl", 0.9, "m1"), (4.5, "owl", 0.55, "m1"),
                            (30.0, "owl", 0.7, "m1"), (3.0, "wren", 0.8, "m1"), (1.5, "owl", 0.95, "m2")])]
    return build(tmp_path_factory.mktemp("ev") / "store", recs)


def test_query_events_merges_each_call_and_keeps_the_half_second(calls):
    res = query_events(calls, model_id="m1")
    got = [(r.label, r.start_s, r.end_s, r.n_windows, round(float(r.peak_score), 2)) for r in res.rows.itertuples()]
    assert got == [("owl", 1.5, 7.5, 3, 0.9), ("wren", 3.0, 6.0, 1, 0.8), ("owl", 30.0, 33.0, 1, 0.7)]
    assert res.total == 3 and res.windows == 5
    assert res.rows["start_time"].iloc[0] == pd.Timestamp("2024-05-01T05:00:01.5", tz="UTC")
    assert res.rows["end_time"].iloc[0] == pd.Timestamp("2024-05-01T05:00:07.5", tz="UTC")
    assert query_events(calls).total == 4  # m2's window of the same call is an event of its own


def test_query_events_min_score_keeps_whole_calls_by_their_peak(calls):
    res = query_events(calls, species="owl", model_id="m1", min_score=0.8)
    assert res.rows[["start_s", "end_s", "n_windows"]].values.tolist() == [[1.5, 7.5, 3]]  # the weak windows too
    windows = query_detections(calls, species="owl", model_id="m1", min_score=0.8)
    assert windows.total == 1  # a window filter would keep only the peak
    none = query_events(calls, model_id="m1", min_score=0.99)
    assert none.rows.empty and "no event peaks at --min-score 0.99" in none.notes[0]


def test_query_events_limit_keeps_the_earliest_events(calls):
    res = query_events(calls, model_id="m1", limit=1)
    assert res.total == 3 and len(res.rows) == 1 and res.rows["start_s"].tolist() == [1.5]
    assert res.rows["n_windows"].tolist() == [3]  # the limit counts events, not windows
