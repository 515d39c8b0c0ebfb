"""Events: overlapping detection windows of one call merge into one row, and nothing else merges."""

import numpy as np
import pandas as pd
import pytest

from pam.analysis.events import EVENT_COLUMNS, detection_events

T0 = pd.Timestamp("2024-05-01T05:00:00", tz="UTC")


def windows(rows: list[tuple], window_s: float = 3.0) -> pd.DataFrame:
    """Detections as the store holds them, from (recording, label, start_s, score[, model])."""
    out = []
    for row in rows:
        rec, label, start_s, score = row[:4]
        model = row[4] if len(row) > 4 else "m1"
        out.append({"recording_id": rec, "path": f"/dumps/S1/{rec}.WAV", "device": None, "start_sample": 0,
                    "start_s": start_s, "end_s": start_s + window_s, "start_time": T0 + pd.Timedelta(seconds=start_s),
                    "label": label, "score": np.float32(score), "model_id": model, "settings_hash": "h",
                    "run_id": "r", "site": "S1", "date": "2024-05-01"})
    frame = pd.DataFrame(out)
    frame["score"] = frame["score"].astype("float32")
    return frame


def test_overlapping_windows_merge_into_one_event_with_its_peak_and_count():
    det = windows([("r1", "owl", 1.5, 0.6), ("r1", "owl", 3.0, 0.95), ("r1", "owl", 4.5, 0.7), ("r1", "owl", 6.0, 0.5)])
    ev = detection_events(det)
    assert list(ev.columns) == EVENT_COLUMNS
    assert len(ev) == 1
    e = ev.iloc[0]
    assert (e["start_s"], e["end_s"], e["n_windows"]) == (1.5, 9.0, 4)
    assert e["peak_score"] == np.float32(0.95) and (e["peak_start_s"], e["peak_end_s"]) == (3.0, 6.0)
    # sub-second precision kept: the event starts at 05:00:01.5, not 05:00:01
    assert e["start_time"] == pd.Timestamp("2024-05-01T05:00:01.5", tz="UTC")
    assert e["end_time"] == pd.Timestamp("2024-05-01T05:00:09", tz="UTC")
    assert (e["recording_id"], e["site"], e["path"], e["model_id"], e["label"]) == (
        "r1", "S1", "/dumps/S1/r1.WAV", "m1", "owl")


def test_a_gap_splits_and_touching_windows_join():
    gaps = windows([("r1", "owl", 0.0, 0.6), ("r1", "owl", 4.5, 0.7), ("r1", "owl", 9.0, 0.8)])  # hop 4.5 > 3 s
    assert detection_events(gaps)[["start_s", "end_s", "n_windows"]].values.tolist() == [
        [0.0, 3.0, 1], [4.5, 7.5, 1], [9.0, 12.0, 1]]
    touching = windows([("r1", "owl", 0.0, 0.6), ("r1", "owl", 3.0, 0.7), ("r1", "owl", 6.0, 0.8)])  # hop = window
    assert detection_events(touching)[["start_s", "end_s", "n_windows"]].values.tolist() == [[0.0, 9.0, 3]]
    # a missing window in a 1.5 s hop run: 0-3 and 3-6 still touch; 0-3 and 4.5-7.5 do not
    one_missing = windows([("r1", "owl", 0.0, 0.6), ("r1", "owl", 3.0, 0.7)])
    assert len(detection_events(one_missing)) == 1
    two_missing = windows([("r1", "owl", 0.0, 0.6), ("r1", "owl", 4.5, 0.7)])
    assert len(detection_events(two_missing)) == 2
    assert len(detection_events(two_missing, gap_s=1.5)) == 1  # asked to bridge gaps of 1.5 s


def test_different_labels_recordings_and_models_never_merge():
    det = windows([("r1", "owl", 0.0, 0.6), ("r1", "owl", 1.5, 0.9),
                   ("r1", "wren", 0.0, 0.8), ("r1", "wren", 1.5, 0.7),
                   ("r2", "owl", 0.0, 0.5), ("r2", "owl", 1.5, 0.55),
                   ("r1", "owl", 0.0, 0.99, "m2")])
    ev = detection_events(det)
    got = sorted(zip(ev["recording_id"], ev["model_id"], ev["label"], ev["n_windows"],
                     ev["peak_score"].astype(float).round(2)))
    assert got == [("r1", "m1", "owl", 2, 0.9), ("r1", "m1", "wren", 2, 0.8), ("r1", "m2", "owl", 1, 0.99),
                   ("r2", "m1", "owl", 2, 0.55)]
    assert ev["n_windows"].sum() == len(det)


def test_input_order_does_not_matter_and_a_long_window_bridges_the_ones_inside_it():
    det = windows([("r1", "owl", 0.0, 0.6), ("r1", "owl", 7.0, 0.8), ("r1", "owl", 1.0, 0.5)])
    det.loc[det["start_s"] == 0.0, "end_s"] = 8.0  # 0-8 covers 1-4 and reaches 7-10
    ev = detection_events(det.sample(frac=1, random_state=3))
    assert ev[["start_s", "end_s", "n_windows", "peak_start_s"]].values.tolist() == [[0.0, 10.0, 3, 7.0]]


def test_equal_peak_scores_name_the_earliest_window():
    ev = detection_events(windows([("r1", "owl", 1.5, 0.8), ("r1", "owl", 0.0, 0.8), ("r1", "owl", 3.0, 0.4)]))
    assert ev["peak_start_s"].tolist() == [0.0]


def test_events_are_sorted_by_time_and_undated_ones_come_last_without_times():
    det = windows([("r2", "owl", 0.0, 0.6), ("r1", "owl", 30.0, 0.6), ("r1", "wren", 10.5, 0.6)])
    det.loc[det["recording_id"] == "r2", "start_time"] = pd.NaT
    ev = detection_events(det)
    assert ev["start_s"].tolist() == [10.5, 30.0, 0.0]
    assert ev["start_time"].iloc[0] == pd.Timestamp("2024-05-01T05:00:10.5", tz="UTC")
    assert pd.isna(ev["start_time"].iloc[2]) and pd.isna(ev["end_time"].iloc[2])


def test_no_detections_give_no_events_with_the_event_columns():
    ev = detection_events(windows([("r1", "owl", 0.0, 0.6)]).head(0))
    assert ev.empty and list(ev.columns) == EVENT_COLUMNS
    assert str(ev["start_time"].dtype).startswith("datetime64") and ev["n_windows"].dtype == np.int64


def test_missing_columns_and_negative_gap_are_refused():
    with pytest.raises(ValueError, match="lack column.*score"):
        detection_events(windows([("r1", "owl", 0.0, 0.6)]).drop(columns=["score"]))
    with pytest.raises(ValueError, match="recording_id or path"):
        detection_events(windows([("r1", "owl", 0.0, 0.6)]).drop(columns=["recording_id", "path"]))
    with pytest.raises(ValueError, match="gap_s must be 0 or more"):
        detection_events(windows([("r1", "owl", 0.0, 0.6)]), gap_s=-1)


def reference_events(det: pd.DataFrame) -> list[tuple]:
    """The merge written the plain way, one window at a time."""
    out = []
    for (rec, model, label), group in det.groupby(["recording_id", "model_id", "label"]):
        group = group.sort_values("start_s")
        current = None
        for r in group.itertuples():
            if current is not None and r.start_s <= current["end"]:
                current["end"] = max(current["end"], r.end_s)
                current["n"] += 1
                if r.score > current["peak"]:
                    current["peak"], current["at"] = r.score, r.start_s
            else:
                if current is not None:
                    out.append(tuple(current.values()))
                current = {"rec": rec, "model": model, "label": label, "start": r.start_s, "end": r.end_s,
                           "n": 1, "peak": r.score, "at": r.start_s}
        out.append(tuple(current.values()))
    return sorted(out)


def test_matches_a_window_by_window_merge_on_random_detections():
    rng = np.random.default_rng(11)
    n = 3000
    rows = [(f"r{rng.integers(0, 6)}", ["owl", "wren"][rng.integers(0, 2)], 1.5 * int(rng.integers(0, 200)),
             float(rng.random()), ["m1", "m2"][rng.integers(0, 2)]) for _ in range(n)]
    det = windows(rows).drop_duplicates(["recording_id", "model_id", "label", "start_s"])
    ev = detection_events(det)
    got = sorted(zip(ev["recording_id"], ev["model_id"], ev["label"], ev["start_s"], ev["end_s"], ev["n_windows"],
                     ev["peak_score"], ev["peak_start_s"]))
    assert got == reference_events(det)
    assert len(ev) < len(det)  # some windows did merge
