"""Review clips: sampled, cut from the recordings exactly, and verdicts back in as training labels."""

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pamstore import Rec, build
from pam.analysis.review import ReviewError, import_review, make_review, write_training_labels
from pam.analysis.summaries import summarize
from pam.train.clips import load_clip_table
from synth import noise, write_wav

RATE = 8000


@pytest.fixture
def store(tmp_path):
    a = write_wav(tmp_path / "dump" / "A" / "20240501_050000.WAV", noise(20.0, RATE, level=0.3, seed=1), RATE)
    stereo = np.stack([noise(12.0, RATE, 0.3, seed=2), noise(12.0, RATE, 0.3, seed=3)], axis=1)
    b = write_wav(tmp_path / "dump" / "B" / "20240501_050000.WAV", stereo, RATE)
    recs = [
        Rec("ra", "A", "2024-05-01T05:00", 20.0, path=str(a), sample_rate=RATE,
            detections=[(0.0, "owl", 0.91, "m1"), (4.5, "owl", 0.55, "m1"), (9.0, "owl", 0.97, "m1"),
                        (16.5, "wren", 0.8, "m1"), (0.0, "wren", 0.6, "m1")]),
        Rec("rb", "B", "2024-05-01T05:00", 12.0, path=str(b), sample_rate=RATE,
            detections=[(3.0, "owl", 0.72, "m1"), (10.5, "wren", 0.66, "m1")]),
        Rec("gone", "B", "2024-05-01T06:00", 30.0, path=str(tmp_path / "moved.wav"), sample_rate=RATE,
            detections=[(1.0, "wren", 0.99, "m1")]),
    ]
    return build(tmp_path / "store", recs)


def test_top_clips_are_cut_exactly(store, tmp_path):
    res = make_review(store, tmp_path / "rev", species=["owl"], n=2, strategy="top", pad_s=1.0)
    table = pd.read_csv(res.csv)
    assert list(table.columns)[:4] == ["clip", "species", "verdict", "notes"]  # what the reviewer fills in, first
    assert sorted(zip(table["peak_start_s"], table["peak_score"])) == [(0.0, 0.91), (9.0, 0.97)]
    assert table["verdict"].isna().all()
    source, _ = sf.read(store.read_manifest().set_index("recording_id").loc["ra", "path"], dtype="float32")
    first = table[table["peak_start_s"] == 0.0].iloc[0]  # 0-3 s padded: clamped at the start, 0-4 s
    clip, rate = sf.read(tmp_path / "rev" / first["clip"], dtype="float32")
    assert rate == RATE and np.array_equal(clip, source[0:4 * RATE])
    later = table[table["peak_start_s"] == 9.0].iloc[0]  # 8-13 s
    clip, _ = sf.read(tmp_path / "rev" / later["clip"], dtype="float32")
    assert np.array_equal(clip, source[8 * RATE:13 * RATE])


def test_random_sample_is_seeded_and_keeps_channels(store, tmp_path):
    one = pd.read_csv(make_review(store, tmp_path / "r1", species=["owl"], n=2, seed=7).csv)
    two = pd.read_csv(make_review(store, tmp_path / "r2", species=["owl"], n=2, seed=7).csv)
    assert len(one) == 2 and one[["recording", "peak_start_s"]].equals(two[["recording", "peak_start_s"]])
    every = pd.read_csv(make_review(store, tmp_path / "all", species=["owl"], n=10).csv)
    assert sorted(every["peak_start_s"]) == [0.0, 3.0, 4.5, 9.0]
    b_clip = every[every["site"] == "B"].iloc[0]
    assert sf.info(str(tmp_path / "all" / b_clip["clip"])).channels == 2


def test_missing_recordings_are_skipped_with_a_note(store, tmp_path):
    res = make_review(store, tmp_path / "rev", species=["wren"], n=10)
    assert res.clips == 3 and "could not be opened" in res.notes[0]


def fill(csv, verdicts: dict[float, str]) -> None:
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    table["verdict"] = [verdicts.get(float(s), "") for s in table["peak_start_s"]]
    table.to_csv(csv, index=False)


def test_verdicts_become_precision_and_training_labels(store, tmp_path):
    res = make_review(store, tmp_path / "rev", n=10, strategy="top")
    table = pd.read_csv(res.csv, dtype=str, keep_default_na=False)
    verdict = {("owl", 0.0): "true", ("owl", 4.5): "False", ("owl", 9.0): "yes", ("owl", 3.0): "?",
               ("wren", 16.5): "no", ("wren", 0.0): "true", ("wren", 10.5): ""}
    table["verdict"] = [verdict.get((sp, float(s)), "") for sp, s in zip(table["species"], table["peak_start_s"])]
    table.to_csv(res.csv, index=False)
    rows, written = import_review(store, res.csv)
    assert written.parent == store.root / "labels" and written.name.startswith("verified-")
    assert len(rows) == 6  # the blank verdict is not a verdict
    times = store.read_verified().set_index(["label", "start_s"])["start_time"]
    assert times.notna().all()  # whole seconds (05:00:09) and fractions (05:00:04.5) both kept
    assert times.loc[("owl", 9.0)] == pd.Timestamp("2024-05-01T05:00:09", tz="UTC")
    assert times.loc[("owl", 4.5)] == pd.Timestamp("2024-05-01T05:00:04.5", tz="UTC")
    precision = summarize(store).tables["precision"].set_index("label")
    assert precision.loc["owl", ["verified_true", "verified_false", "unsure"]].tolist() == [2, 1, 1]
    assert precision.loc["owl", "precision"] == pytest.approx(2 / 3)
    assert precision.loc["wren", "precision"] == pytest.approx(0.5)
    assert summarize(store, min_score=0.9).tables["precision"].set_index("label").loc["owl", "verified_true"] == 2

    labels_csv, n = write_training_labels(store, tmp_path / "labels.csv")
    clips = load_clip_table(labels_csv)
    got = sorted((c.path.name, c.site, c.start_s, c.end_s, c.labels, c.recording) for c in clips)
    assert n == 4 and got == [
        ("20240501_050000.WAV", "A", 0.0, 3.0, ("owl", "wren"), "ra"),  # two species true in one window
        ("20240501_050000.WAV", "A", 4.5, 7.5, (), "ra"),  # false: a negative ('none')
        ("20240501_050000.WAV", "A", 9.0, 12.0, ("owl",), "ra"),
        ("20240501_050000.WAV", "A", 16.5, 19.5, (), "ra"),
    ]
    assert "none" in labels_csv.read_text()


def test_reimport_keeps_the_latest_verdict(store, tmp_path):
    res = make_review(store, tmp_path / "rev", species=["owl"], n=1, strategy="top")
    fill(res.csv, {9.0: "true"})
    import_review(store, res.csv)
    fill(res.csv, {9.0: "false"})
    import_review(store, res.csv)
    ver = store.read_verified()
    assert ver["verdict"].tolist() == ["false"]


def test_bad_verdicts_are_listed_by_line(store, tmp_path):
    res = make_review(store, tmp_path / "rev", species=["owl"], n=2, strategy="top")
    fill(res.csv, {0.0: "definitely", 9.0: "true"})
    with pytest.raises(ReviewError) as err:
        import_review(store, res.csv)
    assert "line 2: verdict 'definitely' is not true, false or unsure" in str(err.value)
    assert not (store.root / "labels").exists()
    with pytest.raises(ReviewError, match="review CSV not found"):
        import_review(store, tmp_path / "nope.csv")


def test_review_never_overwrites_verdicts_nor_writes_into_a_dump(store, tmp_path):
    from pam.io.manifest import OutputInsideDump

    res = make_review(store, tmp_path / "rev", species=["owl"], n=2, strategy="top")
    again = make_review(store, tmp_path / "rev", species=["owl"], n=2, strategy="top")  # nothing filled in yet
    assert again.csv == res.csv
    fill(res.csv, {9.0: "true"})
    before = res.csv.read_text()
    with pytest.raises(ReviewError, match=r"already holds 1 verdict"):
        make_review(store, tmp_path / "rev", species=["owl"], n=2, strategy="top")
    assert res.csv.read_text() == before
    dump = store.read_manifest()["dump"].iloc[0]  # the dump the manifest names
    with pytest.raises(OutputInsideDump, match="must not be inside the dump"):
        make_review(store, f"{dump}/A/review", n=2)


@pytest.fixture
def calls(tmp_path):
    """Overlapping windows: a 3-window owl call and a 40-window (61.5 s) chorus in one recording."""
    wav = write_wav(tmp_path / "dump" / "C" / "20240501_050000.WAV", noise(90.0, RATE, level=0.3, seed=4), RATE)
    chorus = [(20.0 + 1.5 * k, "wren", 0.6 + (0.3 if k == 30 else 0.0), "m1") for k in range(40)]
    recs = [Rec("rc", "C", "2024-05-01T05:00", 90.0, path=str(wav), sample_rate=RATE,
                detections=[(1.5, "owl", 0.7, "m1"), (3.0, "owl", 0.95, "m1"), (4.5, "owl", 0.6, "m1")] + chorus)]
    return build(tmp_path / "store", recs)


def test_review_samples_events_and_stores_the_verdict_against_the_peak_window(calls, tmp_path):
    res = make_review(calls, tmp_path / "rev", species=["owl"], n=10, strategy="top", pad_s=1.0)
    table = pd.read_csv(res.csv)
    assert res.clips == 1  # three overlapping windows, one call, one clip
    row = table.iloc[0]
    assert (row["peak_start_s"], row["peak_end_s"], row["peak_score"]) == (3.0, 6.0, 0.95)  # the peak window
    assert (row["event_start_s"], row["event_end_s"], row["event_windows"]) == (1.5, 7.5, 3)
    assert row["event_start_time"] == "2024-05-01T05:00:01.500+00:00"  # one ISO format, milliseconds
    assert row["clip"].endswith("_00001.500s.wav") and row["clip_start_s"] == 0.5  # named after the event's start
    source, _ = sf.read(str(tmp_path / "dump" / "C" / "20240501_050000.WAV"), dtype="float32")
    clip, _ = sf.read(tmp_path / "rev" / row["clip"], dtype="float32")
    assert np.array_equal(clip, source[int(0.5 * RATE):int(8.5 * RATE)])  # the whole call, 1 s either side

    fill(res.csv, {3.0: "true"})
    import_review(calls, res.csv)
    verified = calls.read_verified()
    det = calls.read_detections()
    matched = verified.merge(det, on=["path", "start_s", "end_s", "label"], suffixes=("", "_det"))
    assert len(verified) == 1 and len(matched) == 1  # review-import finds the detection it judged
    assert matched["score_det"].iloc[0] == matched["score"].iloc[0]
    assert verified["start_time"].iloc[0] == pd.Timestamp("2024-05-01T05:00:03", tz="UTC")


def test_a_review_csv_with_the_old_column_names_still_imports(calls, tmp_path):
    """Written before the columns were renamed: start_s, end_s, score, start_time of the peak window."""
    res = make_review(calls, tmp_path / "rev", species=["owl"], n=10, strategy="top")
    new = pd.read_csv(res.csv, dtype=str, keep_default_na=False)
    old = new.rename(columns={"peak_start_s": "start_s", "peak_end_s": "end_s", "peak_score": "score",
                              "event_windows": "windows"}).drop(columns=["clip_start_s", "event_start_time"])
    old["start_time"] = "2024-05-01T05:00:03+00:00"
    old["verdict"] = "true"
    old.to_csv(tmp_path / "old.csv", index=False)
    import_review(calls, tmp_path / "old.csv")
    verified = calls.read_verified()
    assert verified[["start_s", "end_s", "verdict"]].values.tolist() == [[3.0, 6.0, "true"]]
    assert verified["start_time"].iloc[0] == pd.Timestamp("2024-05-01T05:00:03", tz="UTC")


def test_a_long_event_is_clipped_around_its_peak(calls, tmp_path):
    res = make_review(calls, tmp_path / "rev", species=["wren"], n=5, pad_s=0.5)
    row = pd.read_csv(res.csv).iloc[0]
    assert res.clips == 1 and (row["event_start_s"], row["event_end_s"], row["event_windows"]) == (20.0, 81.5, 40)
    assert (row["peak_start_s"], row["peak_end_s"]) == (65.0, 68.0)  # the peak window (k = 30)
    source, _ = sf.read(str(tmp_path / "dump" / "C" / "20240501_050000.WAV"), dtype="float32")
    clip, _ = sf.read(tmp_path / "rev" / row["clip"], dtype="float32")
    # MAX_EVENT_CLIP_S (30 s) centred on the peak window (66.5 s): 51.5-81.5, then the pad
    assert np.array_equal(clip, source[int(51.0 * RATE):int(82.0 * RATE)])


def test_min_score_picks_events_by_their_peak(calls, tmp_path):
    res = make_review(calls, tmp_path / "rev", n=10, min_score=0.9)
    table = pd.read_csv(res.csv).sort_values("species")
    assert table["species"].tolist() == ["owl", "wren"] and table["event_windows"].tolist() == [3, 40]
