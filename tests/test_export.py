"""Raven selection tables, Audacity label tracks and CSV, byte for byte where the programs care.

Raven and Audacity get one box per event (a call: its overlapping windows joined), CSV one row per window."""

import csv

import pandas as pd
import pytest

from pamstore import Rec, build
from pam.config import PamConfig
from pam.analysis.export import RAVEN_COLUMNS, export_detections

RECS = [
    Rec("r1", "North", "2024-05-01T05:00", 600, path="/dumps/North/20240501_050000.WAV", sample_rate=48000,
        detections=[(12.0, "owl", 0.93, "m1"), (1.5, "wren", 0.61, "m1"), (13.5, "owl", 0.875, "m1")]),
    Rec("r2", "South", "2024-05-01T05:00", 60, path="/dumps/South/20240501_050000.WAV", sample_rate=22050,
        detections=[(58.5, "owl", 0.7, "m1")]),  # window capped at the file's end: 58.5-60.0
]


@pytest.fixture
def store(tmp_path):
    return build(tmp_path / "store", RECS)


def read_tsv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh, delimiter="\t"))


HEADER = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
          "Common Name", "Species", "Score"]


def test_raven_tables_have_one_box_per_event_with_exact_times(store, tmp_path):
    res = export_detections(store, tmp_path / "raven", "raven")
    north = tmp_path / "raven" / "North" / "20240501_050000.Table.1.selections.txt"
    south = tmp_path / "raven" / "South" / "20240501_050000.Table.1.selections.txt"
    assert sorted(res.files) == sorted([north, south]) and res.events and res.detections == 3
    assert read_tsv(north) == [
        HEADER,
        ["1", "Spectrogram 1", "1", "1.500000", "4.500000", "0.0", "24000.0", "wren", "wren", "0.6100"],
        # the owl windows 12-15 and 13.5-16.5 overlap: one call, one box, its peak score
        ["2", "Spectrogram 1", "1", "12.000000", "16.500000", "0.0", "24000.0", "owl", "owl", "0.9300"],
    ]
    assert read_tsv(south)[1] == ["1", "Spectrogram 1", "1", "58.500000", "60.000000", "0.0", "11025.0", "owl", "owl", "0.7000"]
    assert read_tsv(south)[0][:7] == RAVEN_COLUMNS[:7]
    index = pd.read_csv(tmp_path / "raven" / "index.csv")
    assert dict(zip(index["recording"], index["selections"])) == {RECS[0].file: 2, RECS[1].file: 1}


def test_raven_one_box_per_window_when_asked(store, tmp_path):
    res = export_detections(store, tmp_path / "raven", "raven", events=False)
    north = tmp_path / "raven" / "North" / "20240501_050000.Table.1.selections.txt"
    assert not res.events and res.detections == 4
    assert read_tsv(north)[1:] == [
        ["1", "Spectrogram 1", "1", "1.500000", "4.500000", "0.0", "24000.0", "wren", "wren", "0.6100"],
        ["2", "Spectrogram 1", "1", "12.000000", "15.000000", "0.0", "24000.0", "owl", "owl", "0.9300"],
        ["3", "Spectrogram 1", "1", "13.500000", "16.500000", "0.0", "24000.0", "owl", "owl", "0.8750"],
    ]


def test_raven_with_filters_and_frequency_box(store, tmp_path):
    res = export_detections(store, tmp_path / "r", "raven", species=["owl"], sites=["North"], low_hz=500, high_hz=4000)
    rows = read_tsv(res.files[0])
    assert len(res.files) == 1 and rows[1:] == [
        ["1", "Spectrogram 1", "1", "12.000000", "16.500000", "500.0", "4000.0", "owl", "owl", "0.9300"]]


def test_min_score_keeps_whole_events_by_their_peak(store, tmp_path):
    res = export_detections(store, tmp_path / "r", "raven", sites=["North"], min_score=0.9)
    assert read_tsv(res.files[0])[1:] == [  # the 0.875 window stays part of the call; the 0.61 wren is out
        ["1", "Spectrogram 1", "1", "12.000000", "16.500000", "0.0", "24000.0", "owl", "owl", "0.9300"]]
    windows = export_detections(store, tmp_path / "w", "raven", sites=["North"], min_score=0.9, events=False)
    assert [r[3:5] for r in read_tsv(windows.files[0])[1:]] == [["12.000000", "15.000000"]]


def test_audacity_label_tracks(store, tmp_path):
    res = export_detections(store, tmp_path / "aud", "audacity", min_score=0.65)
    north = tmp_path / "aud" / "North" / "20240501_050000.labels.txt"
    assert north in res.files
    assert north.read_text() == "12.000000\t16.500000\towl 0.930\n"
    windows = export_detections(store, tmp_path / "w", "audacity", min_score=0.65, events=False)
    assert (tmp_path / "w" / "North" / "20240501_050000.labels.txt").read_text() == (
        "12.000000\t15.000000\towl 0.930\n13.500000\t16.500000\towl 0.875\n")
    assert windows.detections == 3


def test_csv_has_local_time_beside_utc(store, tmp_path):
    conf = PamConfig.model_validate({"sites": {"South": {"utc_offset": "-05:00"}}})
    res = export_detections(store, tmp_path / "c", "csv", config=conf)
    assert res.files == [tmp_path / "c" / "detections.csv"] and not res.events
    frame = pd.read_csv(res.files[0])
    south = frame[frame["site"] == "South"].iloc[0]
    assert south["start_time"] == "2024-05-01T05:00:58.500+00:00"
    assert south["local_time"] == "2024-05-01T00:00:58.500-05:00"
    assert len(frame) == 4
    # one ISO format with milliseconds on every row, whole seconds included (they mixed two before)
    assert frame["start_time"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00").all()
    assert frame["local_time"].str.len().nunique() == 1
    named = export_detections(store, tmp_path / "out" / "dets.csv", "csv", config=conf)  # a file name, not a folder
    assert named.files == [tmp_path / "out" / "dets.csv"] and (tmp_path / "out" / "dets.csv").is_file()
    assert pd.read_csv(named.files[0]).equals(frame)


def test_csv_of_events(store, tmp_path):
    conf = PamConfig.model_validate({"sites": {"North": {"utc_offset": "+02:00"}}})
    res = export_detections(store, tmp_path / "c", "csv", config=conf, events=True)
    assert res.files == [tmp_path / "c" / "events.csv"] and res.events and res.detections == 3
    frame = pd.read_csv(res.files[0])
    owl = frame[(frame["site"] == "North") & (frame["label"] == "owl")].iloc[0]
    assert (owl["start_s"], owl["end_s"], owl["n_windows"], owl["peak_start_s"]) == (12.0, 16.5, 2, 12.0)
    assert owl["start_time"] == "2024-05-01T05:00:12.000+00:00" and owl["end_time"] == "2024-05-01T05:00:16.500+00:00"
    assert owl["local_time"] == "2024-05-01T07:00:12.000+02:00"


def test_unknown_format_is_refused(store, tmp_path):
    with pytest.raises(ValueError, match="format must be one of raven, audacity, csv"):
        export_detections(store, tmp_path / "x", "xlsx")


def test_export_into_a_scanned_dump_is_refused(store, tmp_path):
    from pam.io.manifest import OutputInsideDump

    dump = store.read_manifest()["dump"].iloc[0]
    with pytest.raises(OutputInsideDump, match="must not be inside the dump"):
        export_detections(store, f"{dump}/AM01", "raven")


def test_a_selection_table_lists_each_call_once_when_two_models_found_it(tmp_path):
    recs = [Rec("r1", "North", "2024-05-01T05:00", 600, path="/dumps/North/20240501_050000.WAV", sample_rate=48000,
                scored_by=("m1", "m2"),
                detections=[(12.0, "owl", 0.93, "m1"), (12.0, "owl", 0.97, "m2"), (30.0, "owl", 0.6, "m2")]),
            Rec("r2", "North", "2024-05-01T06:00", 600, path="/dumps/North/20240501_060000.WAV", sample_rate=48000,
                detections=[(3.0, "owl", 0.8, "m1")])]
    store = build(tmp_path / "store", recs)  # m1 scored both recordings, m2 one: m1 counts (no runs here)
    res = export_detections(store, tmp_path / "raven", "raven")
    assert res.detections == 2 and any("exported those of model m1" in n for n in res.notes)
    both = export_detections(store, tmp_path / "m2", "raven", model_id="m2")
    assert both.detections == 2 and not any("models" in n for n in both.notes)


def test_re_export_with_other_filters_leaves_no_stale_table(store, tmp_path):
    first = export_detections(store, tmp_path / "raven", "raven")
    assert len(first.files) == 2
    (tmp_path / "raven" / "my_notes.txt").write_text("mine")  # not pam's: kept
    again = export_detections(store, tmp_path / "raven", "raven", sites=["South"])
    written = sorted(p.relative_to(tmp_path / "raven").as_posix() for p in (tmp_path / "raven").rglob("*.txt"))
    assert written == sorted([f.relative_to(tmp_path / "raven").as_posix() for f in again.files] + ["my_notes.txt"])
    assert len(again.files) == 1
