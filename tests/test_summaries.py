"""Summary tables checked cell by cell against values worked out by hand.

The store (see RECS): site A keeps UTC and has a gap (nothing recorded on 05-03, an
unreadable file on 05-05); site B is at UTC-05:00 and records 22:00-02:00 local, across
midnight, with one recording scanned but never scored; site C is in Asia/Kolkata (+05:30)
with one hour straddling local midnight. Model m2 scored only recording a1.
"""

import math
import shutil
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pamstore import Rec, build, commit
import pam.store.schemas as schemas
from pam.config import PamConfig
from pam.store.store import Store
from pam.analysis.summaries import summarize

CONF = PamConfig.model_validate({"sites": {"B": {"utc_offset": "-05:00"}, "C": {"timezone": "Asia/Kolkata"}}})

RECS = [
    Rec("a1", "A", "2024-05-01T05:00", 7200, scored_by=("m1", "m2"),
        detections=[(0, "owl", .9, "m1"), (30, "owl", .5, "m1"), (90, "owl", .8, "m1"), (3600, "wren", .7, "m1"),
                    (10, "owl", .99, "m2")]),
    Rec("a2", "A", "2024-05-02T05:00", 7200),
    Rec("a3", "A", "2024-05-04T05:00", 3600, status="truncated", detections=[(10, "wren", .95, "m1")]),
    Rec("a4", "A", "2024-05-05T05:00", 3600, status="unreadable", scored_by=()),
    Rec("b1", "B", "2024-05-01T03:00", 14400, detections=[(1800, "owl", .9, "m1"), (7260, "owl", .85, "m1")]),
    Rec("b2", "B", "2024-05-02T03:00", 14400, detections=[(10800, "wren", .75, "m1")]),
    Rec("b3", "B", "2024-05-04T03:00", 3600, scored_by=()),
    Rec("c1", "C", "2024-05-01T18:00", 3600, detections=[(1200, "owl", .88, "m1"), (2400, "owl", .66, "m1")]),
]


@pytest.fixture
def store(tmp_path):
    return build(tmp_path / "store", RECS)


def rows(frame: pd.DataFrame, cols: list[str]) -> list[tuple]:
    """Rows as plain tuples; missing values as None, floats rounded, for exact comparison."""
    out = []
    for rec in frame[cols].itertuples(index=False):
        vals = []
        for v in rec:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                vals.append(None)
            elif isinstance(v, (float, np.floating)):
                vals.append(round(float(v), 4))
            elif isinstance(v, (np.integer, np.bool_)):
                vals.append(v.item())
            else:
                vals.append(v)
        out.append(tuple(vals))
    return sorted(out, key=lambda t: tuple("" if x is None else str(x) for x in t))


def test_effort_splits_recordings_at_local_midnight(store):
    eff = summarize(store, CONF).tables["effort"]
    assert rows(eff, ["site", "local_date", "local_hour", "recorded_h", "analysed_h"]) == rows(pd.DataFrame([
        ("A", "2024-05-01", 5, 1.0, 1.0), ("A", "2024-05-01", 6, 1.0, 1.0),
        ("A", "2024-05-02", 5, 1.0, 1.0), ("A", "2024-05-02", 6, 1.0, 1.0),
        ("A", "2024-05-04", 5, 1.0, 1.0),  # truncated counts; 05-03 gap and unreadable 05-05 absent
        ("B", "2024-04-30", 22, 1.0, 1.0), ("B", "2024-04-30", 23, 1.0, 1.0),  # b1 starts 22:00 local the day before
        ("B", "2024-05-01", 0, 1.0, 1.0), ("B", "2024-05-01", 1, 1.0, 1.0),
        ("B", "2024-05-01", 22, 1.0, 1.0), ("B", "2024-05-01", 23, 1.0, 1.0),
        ("B", "2024-05-02", 0, 1.0, 1.0), ("B", "2024-05-02", 1, 1.0, 1.0),
        ("B", "2024-05-03", 22, 1.0, 0.0),  # b3 recorded, never scored
        ("C", "2024-05-01", 23, 0.5, 0.5), ("C", "2024-05-02", 0, 0.5, 0.5),  # 23:30-00:30 at +05:30
    ]), [0, 1, 2, 3, 4])


def test_site_days_tell_zero_from_not_recorded(store):
    days = summarize(store, CONF).tables["site_days"]
    cols = ["site", "local_date", "recorded_h", "analysed_h", "surveyed", "detections", "species", "species_list"]
    assert rows(days, cols) == rows(pd.DataFrame([
        # m1's 4 detections; m2's owl in the same audio is not added (m1 counts: it scored more recordings)
        ("A", "2024-05-01", 2.0, 2.0, True, 4, 2, "owl;wren"),
        ("A", "2024-05-02", 2.0, 2.0, True, 0, 0, ""),  # recorded and scored, nothing found: a real zero
        ("A", "2024-05-04", 1.0, 1.0, True, 1, 1, "wren"),
        ("B", "2024-04-30", 2.0, 2.0, True, 1, 1, "owl"),
        ("B", "2024-05-01", 4.0, 4.0, True, 1, 1, "owl"),
        ("B", "2024-05-02", 2.0, 2.0, True, 1, 1, "wren"),
        ("B", "2024-05-03", 1.0, 0.0, False, None, None, None),  # recorded, not scored: unknown
        ("C", "2024-05-01", 0.5, 0.5, True, 1, 1, "owl"),
        ("C", "2024-05-02", 0.5, 0.5, True, 1, 1, "owl"),
    ]), list(range(8)))
    assert "2024-05-03" not in set(days.loc[days["site"] == "A", "local_date"])  # the gap is absent, not 0


def test_daily_counts_zero_filled_per_model(store):
    daily = summarize(store, CONF).tables["daily_counts"]
    cols = ["site", "local_date", "label", "model_id", "detections", "positive_minutes", "max_score"]
    assert rows(daily, cols) == rows(pd.DataFrame([
        ("A", "2024-05-01", "owl", "m1", 3, 2, 0.9),  # 05:00:00, 05:00:30 share a minute; 05:01:30
        ("A", "2024-05-01", "wren", "m1", 1, 1, 0.7),
        ("A", "2024-05-01", "owl", "m2", 1, 1, 0.99),  # m2 scored only a1: no zero rows elsewhere
        ("A", "2024-05-02", "owl", "m1", 0, 0, None), ("A", "2024-05-02", "wren", "m1", 0, 0, None),
        ("A", "2024-05-04", "owl", "m1", 0, 0, None), ("A", "2024-05-04", "wren", "m1", 1, 1, 0.95),
        ("B", "2024-04-30", "owl", "m1", 1, 1, 0.9), ("B", "2024-04-30", "wren", "m1", 0, 0, None),
        ("B", "2024-05-01", "owl", "m1", 1, 1, 0.85), ("B", "2024-05-01", "wren", "m1", 0, 0, None),
        ("B", "2024-05-02", "owl", "m1", 0, 0, None), ("B", "2024-05-02", "wren", "m1", 1, 1, 0.75),
        ("C", "2024-05-01", "owl", "m1", 1, 1, 0.88), ("C", "2024-05-01", "wren", "m1", 0, 0, None),
        ("C", "2024-05-02", "owl", "m1", 1, 1, 0.66), ("C", "2024-05-02", "wren", "m1", 0, 0, None),
    ]), list(range(7)))


def test_threshold_and_model_restrict_counts(store):
    res = summarize(store, CONF, min_score=0.8, model_id="m1")
    daily = res.tables["daily_counts"]
    a1 = daily[(daily["site"] == "A") & (daily["local_date"] == "2024-05-01")]
    assert rows(a1, ["label", "model_id", "detections", "positive_minutes"]) == [("owl", "m1", 2, 2), ("wren", "m1", 0, 0)]
    assert set(daily["model_id"]) == {"m1"}
    c = daily[daily["site"] == "C"]
    assert rows(c, ["local_date", "label", "detections"]) == [
        ("2024-05-01", "owl", 1), ("2024-05-01", "wren", 0), ("2024-05-02", "owl", 0), ("2024-05-02", "wren", 0)]
    assert res.notes == []  # only m1's done rows are effort now


def test_site_richness_over_deployment(store):
    rich = summarize(store, CONF).tables["site_richness"]
    cols = ["site", "first_date", "last_date", "days_recorded", "days_surveyed", "recorded_h", "analysed_h",
            "detections", "species", "species_list"]
    assert rows(rich, cols) == [
        ("A", "2024-05-01", "2024-05-04", 3, 3, 5.0, 5.0, 5, 2, "owl;wren"),  # m1 only (see site_days)
        ("B", "2024-04-30", "2024-05-03", 4, 3, 9.0, 8.0, 3, 2, "owl;wren"),
        ("C", "2024-05-01", "2024-05-02", 2, 2, 1.0, 1.0, 2, 1, "owl"),
    ]


def test_diel_activity_in_local_hours(store):
    diel = summarize(store, CONF, model_id="m1").tables["diel"]
    cols = ["site", "label", "local_hour", "detections", "analysed_h", "detections_per_h"]
    assert rows(diel, cols) == rows(pd.DataFrame([
        ("A", "owl", 5, 3, 3.0, 1.0), ("A", "owl", 6, 0, 2.0, 0.0),
        ("A", "wren", 5, 1, 3.0, 0.3333), ("A", "wren", 6, 1, 2.0, 0.5),
        ("B", "owl", 22, 1, 2.0, 0.5), ("B", "owl", 23, 0, 2.0, 0.0), ("B", "owl", 0, 1, 2.0, 0.5), ("B", "owl", 1, 0, 2.0, 0.0),
        ("B", "wren", 22, 0, 2.0, 0.0), ("B", "wren", 23, 0, 2.0, 0.0), ("B", "wren", 0, 0, 2.0, 0.0),
        ("B", "wren", 1, 1, 2.0, 0.5),
        ("C", "owl", 23, 1, 0.5, 2.0), ("C", "owl", 0, 1, 0.5, 2.0),
        ("C", "wren", 23, 0, 0.5, 0.0), ("C", "wren", 0, 0, 0.5, 0.0),  # scored at C, never detected there
    ]), list(range(6)))


def test_diel_keeps_zero_hours_of_a_site_that_never_detected_the_species(tmp_path):
    # S1 detects owl three times in 05:00-07:00; S2 records 05:00-06:00 on two days and never detects it;
    # S2's 20:00 recording was scanned but not scored, and nobody recorded at 06:00 on S2
    recs = [Rec("s1", "S1", "2024-05-01T05:00", 7200, detections=[(600, "owl", .9, "m1"), (1200, "owl", .8, "m1"),
                                                                   (5400, "owl", .7, "m1")]),
            Rec("s2a", "S2", "2024-05-01T05:00", 3600), Rec("s2b", "S2", "2024-05-02T05:00", 3600),
            Rec("s2c", "S2", "2024-05-02T20:00", 3600, scored_by=())]
    diel = summarize(build(tmp_path / "s", recs), PamConfig()).tables["diel"]
    assert rows(diel, ["site", "label", "model_id", "local_hour", "detections", "analysed_h", "detections_per_h"]) == [
        ("S1", "owl", "m1", 5, 2, 1.0, 2.0), ("S1", "owl", "m1", 6, 1, 1.0, 1.0),
        ("S2", "owl", "m1", 5, 0, 2.0, 0.0)]  # no row for S2 at 06:00 (not recorded) or 20:00 (not scored)
    # pooled over sites, 05:00 is 2 detections in 3 analysed hours (without S2's row it read 2 per hour)
    five = diel[diel["local_hour"] == 5]
    assert five["detections"].sum() / five["analysed_h"].sum() == pytest.approx(2 / 3)


def test_diel_hours_are_each_models_own(store):
    diel = summarize(store, CONF).tables["diel"]
    m2 = diel[diel["model_id"] == "m2"]
    # m2 scored only a1 (A, 05:00-07:00 UTC) and found one owl at 05:00:10
    assert rows(m2, ["site", "label", "local_hour", "detections", "analysed_h"]) == [
        ("A", "owl", 5, 1, 1.0), ("A", "owl", 6, 0, 1.0)]
    a5 = diel[(diel["model_id"] == "m1") & (diel["site"] == "A") & (diel["local_hour"] == 5)]
    assert a5["analysed_h"].tolist() == [3.0, 3.0]  # m1: a1, a2, a3 each give A one hour at 05:00


def test_occupancy_daily_periods_tell_zero_from_missing(store):
    occ = summarize(store, CONF).tables["occupancy"]
    got = {(r.label, r.model_id, r.site): [] for r in occ.itertuples()}
    for r in occ.sort_values("period").itertuples():
        got[(r.label, r.model_id, r.site)].append(None if pd.isna(r.detected) else int(r.detected))
    n = None
    # periods: 04-30, 05-01, 05-02, 05-03, 05-04; m2 scored only a1 (A, 05-01) and found owl there
    assert got == {
        ("owl", "m1", "A"): [n, 1, 0, n, 0], ("owl", "m1", "B"): [1, 1, 0, n, n], ("owl", "m1", "C"): [n, 1, 1, n, n],
        ("owl", "m2", "A"): [n, 1, n, n, n], ("owl", "m2", "B"): [n, n, n, n, n], ("owl", "m2", "C"): [n, n, n, n, n],
        ("wren", "m1", "A"): [n, 1, 0, n, 1], ("wren", "m1", "B"): [0, 0, 1, n, n], ("wren", "m1", "C"): [n, 0, 0, n, n],
    }
    first = occ[occ["period"] == 1].iloc[0]
    assert (first["period_start"], first["period_end"]) == ("2024-04-30", "2024-04-30")


def test_occupancy_two_day_periods_and_csv(store):
    res = summarize(store, CONF, period_days=2)
    occ = res.tables["occupancy"]
    owl_b = occ[(occ["label"] == "owl") & (occ["model_id"] == "m1") & (occ["site"] == "B")].sort_values("period")
    assert [None if pd.isna(v) else int(v) for v in owl_b["detected"]] == [1, 0, None]
    assert owl_b["surveyed_days"].tolist() == [2, 1, 0]
    assert list(owl_b["period_start"]) == ["2024-04-30", "2024-05-02", "2024-05-04"]
    folder = store.summaries_dir / "occupancy"
    text = (folder / "detection_history_wren_model-m1.csv").read_text().splitlines()
    assert text[0] == ("site,y.1,y.2,y.3,lat,lon,hours.1,hours.2,hours.3,doy.1,doy.2,doy.3,"
                       "start.1,start.2,start.3,from_sunrise.1,from_sunrise.2,from_sunrise.3")
    # doy and start are those of the period's first surveyed day: 2024-05-01 is day 122 (leap year).
    # B (-05:00) starts 04-30 at 22:00; on 05-02 its audio is b2 running on past midnight (0.0).
    # C (+05:30) records 23:30-00:30. No site has lat/lon in CONF: lat, lon, from_sunrise are NA.
    assert text[1:] == ["A,1,0,1,NA,NA,2.0,2.0,1.0,122,123,125,5.0,5.0,5.0,NA,NA,NA",
                        "B,0,1,NA,NA,NA,6.0,2.0,NA,121,123,NA,22.0,0.0,NA,NA,NA,NA",
                        "C,0,0,NA,NA,NA,0.5,0.5,NA,122,123,NA,23.5,0.0,NA,NA,NA,NA"]
    periods = pd.read_csv(folder / "periods.csv")
    assert periods["column"].tolist() == ["y.1", "y.2", "y.3"]
    assert periods["period_end"].tolist() == ["2024-05-01", "2024-05-03", "2024-05-05"]
    index = pd.read_csv(folder / "histories.csv")
    assert index[["file", "label", "model_id"]].values.tolist() == [
        ["detection_history_owl_model-m1.csv", "owl", "m1"], ["detection_history_wren_model-m1.csv", "wren", "m1"]]
    assert index["min_score"].isna().all() and index["detect_threshold"].isna().all()  # no filter, no runs


def test_incremental_equals_full_recompute(tmp_path):
    first, second = RECS[:2] + RECS[4:5], RECS[2:4] + RECS[5:]
    store = build(tmp_path / "inc", first, manifest_recs=RECS)
    r1 = summarize(store, CONF)
    assert r1.full
    commit(store, second)
    r2 = summarize(store, CONF)
    assert not r2.full and r2.new_done_files == 1
    # new detections: a3 (A 05-04), b2 (B 05-02), c1 (C 05-01, 05-02); nothing else is recounted
    assert r2.recounted_days == 4
    again = summarize(store, CONF)
    assert not again.full and again.recounted_days == 0
    shutil.copytree(store.root, tmp_path / "fresh", ignore=shutil.ignore_patterns("summaries"))
    full = summarize(Store(tmp_path / "fresh"), CONF)
    assert full.full
    for name, frame in full.tables.items():
        pd.testing.assert_frame_equal(store.read_summary(name), frame, check_like=False, obj=name)


def test_changed_filter_recomputes_everything(store):
    summarize(store, CONF)
    res = summarize(store, CONF, min_score=0.8)
    assert res.full
    assert int(res.tables["hourly_counts"]["detections"].sum()) == 7  # .9 .8 .99 .95 .9 .85 .88


def test_config_supplies_defaults(store):
    conf = CONF.model_copy(update={"summaries": CONF.summaries.model_copy(update={"model": "m2", "period_days": 5})})
    res = summarize(store, conf)
    assert set(res.tables["daily_counts"]["model_id"]) == {"m2"}
    assert res.tables["occupancy"]["period"].max() == 1


def test_empty_store_gives_empty_tables(tmp_path):
    res = summarize(Store(tmp_path / "empty"), CONF)
    assert all(frame.empty for frame in res.tables.values())


def test_recorded_but_never_scored_is_unknown_not_zero(tmp_path):
    recs = [Rec("x1", "A", "2024-05-01T05:00", 3600, scored_by=())]
    res = summarize(build(tmp_path / "s", recs), CONF)
    assert rows(res.tables["site_days"], ["local_date", "recorded_h", "analysed_h", "surveyed", "detections"]) == [
        ("2024-05-01", 1.0, 0.0, False, None)]
    assert res.tables["daily_counts"].empty and res.tables["occupancy"].empty


def test_forced_rerun_recounts_everything(tmp_path):
    from pamstore import flush_for
    from pam.store.store import new_run_id

    store = build(tmp_path / "s", RECS)
    summarize(store, CONF)
    fewer = [Rec("b1", "B", "2024-05-01T03:00", 14400, detections=[(1800, "owl", .9, "m1")])]
    run = new_run_id()
    store.commit(run, 0, flush_for(fewer, "m1", run), replace=True)  # --force: b1's old rows go
    res = summarize(store, CONF)
    assert res.full
    b = res.tables["daily_counts"]
    assert rows(b[(b["site"] == "B") & (b["label"] == "owl")], ["local_date", "detections"]) == [
        ("2024-04-30", 1), ("2024-05-01", 0), ("2024-05-02", 0)]


def test_daylight_saving_change_in_local_hours(tmp_path):
    conf = PamConfig.model_validate({"sites": {"NY": {"timezone": "America/New_York"}}})
    # 04:00-08:00 UTC on 2024-11-03: 00:00-01:00 EDT, 01:00-02:00 EDT, 01:00-02:00 EST, 02:00-03:00 EST
    recs = [Rec("n1", "NY", "2024-11-03T04:00", 4 * 3600, detections=[(5400, "owl", .9, "m1"), (9000, "owl", .8, "m1")])]
    res = summarize(build(tmp_path / "s", recs), conf)
    assert rows(res.tables["effort"], ["local_date", "local_hour", "analysed_h"]) == [
        ("2024-11-03", 0, 1.0), ("2024-11-03", 1, 2.0), ("2024-11-03", 2, 1.0)]
    # 05:30 UTC = 01:30 EDT and 06:30 UTC = 01:30 EST: the same local hour, two real minutes
    assert rows(res.tables["hourly_counts"], ["local_hour", "detections", "positive_minutes"]) == [(1, 2, 2)]


def test_two_models_of_one_species_are_not_added_in_site_totals(tmp_path):
    store = build(tmp_path / "store", RECS)  # m1 scored everything, m2 only a1
    res = summarize(store, CONF)
    assert res.label_models == {"owl": "m1", "wren": "m1"}
    assert any("owl has detections of 2 models" in n and "model m1" in n and "`pam summarize --model ID`" in n
               for n in res.notes)
    assert any(n.startswith("the store holds results of 2 models or heads (m1, m2); a recording scored by any")
               and "`pam summarize --model ID`" in n for n in res.notes), res.notes
    # a newer run with m2 (say a recalibrated copy now in use): m2 counts for owl from then on
    row = {"run_id": "r-new", "flow": "detect", "status": "completed", "model_id": "m2",
           "started_at": datetime(2030, 1, 1, tzinfo=timezone.utc)}
    table = pa.Table.from_pylist([row], schema=schemas.RUNS)
    store.runs_dir.mkdir(exist_ok=True)
    pq.write_table(table, store.runs_dir / "run-r-new.parquet")
    res = summarize(store, CONF, full=True)
    assert res.label_models["owl"] == "m2"
    a = res.tables["site_richness"].set_index("site").loc["A"]
    assert a["detections"] == 1 + 2  # m2's one owl + m1's two wrens; m1's owls are not added
    assert res.tables["daily_counts"]["model_id"].nunique() == 2  # per-model tables keep both

