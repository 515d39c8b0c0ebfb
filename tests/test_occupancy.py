"""Occupancy histories of a store holding two models that disagree, with their survey covariates.

Both models scored every recording. LDN (London, Europe/London, with a position) records
04:00-05:00 BST on 21 and 22 June 2024; FAR (UTC, no position) records 05:00-06:00 UTC on
the same days. m1 hears the owl at LDN on both days and never at FAR; m2 hears it at LDN
only on the 22nd and at FAR on the 21st. m2's detection run is the latest, so the report
counts m2 for the owl.
"""

import json
from datetime import datetime, timezone

import pandas as pd
import pytest

from pamstore import Rec, build
from pam.config import PamConfig
from pam.analysis.occupancy import history_matrix, write_history_csvs
from pam.analysis.summaries import summarize
from pam.analysis.survey_covariates import site_positions

LDN_LAT, LDN_LON = 51.5074, -0.1278
CONF = PamConfig.model_validate({"sites": {"LDN": {"timezone": "Europe/London", "lat": LDN_LAT, "lon": LDN_LON},
                                           "FAR": {"utc_offset": "+00:00"}}})
BOTH = ("m1", "m2")
RECS = [
    Rec("l1", "LDN", "2024-06-21T03:00", 3600, scored_by=BOTH, detections=[(600, "owl", .9, "m1")]),
    Rec("l2", "LDN", "2024-06-22T03:00", 3600, scored_by=BOTH, detections=[(100, "owl", .8, "m1"),
                                                                            (200, "owl", .7, "m2")]),
    Rec("f1", "FAR", "2024-06-21T05:00", 3600, scored_by=BOTH, detections=[(60, "owl", .6, "m2")]),
    Rec("f2", "FAR", "2024-06-22T05:00", 3600, scored_by=BOTH),
]
# Published sunrise at London on 21 and 22 June 2024: 04:43 BST (03:43 UTC)
SUNRISE_LOCAL_H = 4 + 43 / 60
MINUTE_H = 1 / 60


def run_row(run_id: str, model: str, day: int, owl_threshold: float) -> dict:
    settings = {"window_s": 3.0, "hop_s": 1.5, "channel": None, "thresholds": {"owl": owl_threshold}}
    return {"run_id": run_id, "flow": "detect", "status": "completed", "model_id": model,
            "started_at": datetime(2024, 6, day, tzinfo=timezone.utc),
            "config_json": json.dumps({"detect": {}, "settings": settings})}


@pytest.fixture
def store(tmp_path):
    store = build(tmp_path / "store", RECS)
    store.write_run(run_row("r1", "m1", 23, 0.5))
    store.write_run(run_row("r2", "m2", 24, 0.35))
    store.write_run(run_row("r3", "m2", 25, 0.4))  # m2 again with a changed threshold
    return store


def histories(occ: pd.DataFrame) -> dict:
    out = {}
    for r in occ.sort_values("period").itertuples():
        out.setdefault((r.model_id, r.site), []).append(None if pd.isna(r.detected) else int(r.detected))
    return out


def test_occupancy_table_keeps_each_models_history(store):
    res = summarize(store, CONF)
    occ = res.tables["occupancy"]
    assert histories(occ) == {("m1", "FAR"): [0, 0], ("m1", "LDN"): [1, 1],
                              ("m2", "FAR"): [1, 0], ("m2", "LDN"): [0, 1]}
    assert res.label_models == {"owl": "m2"}
    with pytest.raises(ValueError, match="owl has histories of 2 models"):
        history_matrix(occ, "owl")
    assert history_matrix(occ, "owl", "m1").to_numpy().tolist() == [[0, 0], [1, 1]]


def test_history_csv_holds_the_counting_model_with_covariates(store):
    summarize(store, CONF)
    folder = store.summaries_dir / "occupancy"
    assert sorted(p.name for p in folder.glob("detection_history_*.csv")) == ["detection_history_owl_model-m2.csv"]
    wide = pd.read_csv(folder / "detection_history_owl_model-m2.csv")
    assert list(wide.columns) == ["site", "y.1", "y.2", "lat", "lon", "hours.1", "hours.2", "doy.1", "doy.2",
                                  "start.1", "start.2", "from_sunrise.1", "from_sunrise.2"]
    far, ldn = wide.iloc[0], wide.iloc[1]
    assert (far["site"], far["y.1"], far["y.2"]) == ("FAR", 1, 0)  # m2's, not m1's 0 0
    assert (ldn["site"], ldn["y.1"], ldn["y.2"]) == ("LDN", 0, 1)  # m2's, not m1's 1 1
    assert (ldn["lat"], ldn["lon"]) == (LDN_LAT, LDN_LON) and far[["lat", "lon"]].isna().all()
    assert wide[["hours.1", "hours.2"]].to_numpy().tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert wide[["doy.1", "doy.2"]].to_numpy().tolist() == [[173, 174], [173, 174]]  # 21 June 2024 is day 173
    assert wide[["start.1", "start.2"]].to_numpy().tolist() == [[5.0, 5.0], [4.0, 4.0]]  # FAR UTC, LDN BST
    assert far[["from_sunrise.1", "from_sunrise.2"]].isna().all()  # no position
    for col in ("from_sunrise.1", "from_sunrise.2"):
        assert ldn[col] == pytest.approx(4.0 - SUNRISE_LOCAL_H, abs=1.5 * MINUTE_H)
    index = pd.read_csv(folder / "histories.csv", dtype={"detect_threshold": str})
    assert index[["file", "label", "model_id", "detect_threshold"]].to_dict("records") == [
        {"file": "detection_history_owl_model-m2.csv", "label": "owl", "model_id": "m2",
         "detect_threshold": "0.35;0.4"}]  # the thresholds of m2's two runs
    assert index["min_score"].isna().all()  # no --min-score


def test_history_csv_follows_the_counting_model_and_min_score(tmp_path):
    store = build(tmp_path / "store", RECS)
    store.write_run(run_row("r1", "m1", 23, 0.5))
    summarize(store, CONF, min_score=0.65)
    folder = store.summaries_dir / "occupancy"
    assert [p.name for p in folder.glob("detection_history_*.csv")] == ["detection_history_owl_model-m1.csv"]
    index = pd.read_csv(folder / "histories.csv")
    assert index[["model_id", "min_score", "detect_threshold"]].values.tolist() == [["m1", 0.65, 0.5]]
    store.write_run(run_row("r2", "m2", 24, 0.35))  # m2 now the latest run: its file replaces m1's
    summarize(store, CONF, min_score=0.65)
    assert [p.name for p in folder.glob("detection_history_*.csv")] == ["detection_history_owl_model-m2.csv"]
    wide = pd.read_csv(folder / "detection_history_owl_model-m2.csv")
    # m2's FAR owl scored 0.6, under --min-score 0.65: FAR is 0 on both days now
    assert wide[["site", "y.1", "y.2"]].values.tolist() == [["FAR", 0, 0], ["LDN", 0, 1]]


def test_histories_of_another_model_can_be_written(store, tmp_path):
    occ = summarize(store, CONF).tables["occupancy"]
    written = write_history_csvs(occ, tmp_path / "m1", {"owl": "m1"}, site_positions(CONF, ["FAR", "LDN"]))
    assert [p.name for p in written] == ["detection_history_owl_model-m1.csv"]
    wide = pd.read_csv(written[0])
    assert wide[["site", "y.1", "y.2"]].values.tolist() == [["FAR", 0, 0], ["LDN", 1, 1]]
