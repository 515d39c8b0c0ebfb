"""Clip tables: every supported layout, span handling, errors that list every bad row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pam.train.clips import (
    ClipTableError,
    classes_of,
    label_matrix,
    load_audio,
    load_clip_set,
    load_clip_table,
    parse_labels,
)
from pam.train.split import split_by_recording

DATA = Path(__file__).parents[2] / "shared" / "data"


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "a.wav", tone(2.0, 16000), 16000, subtype="PCM_16")
    sf.write(tmp_path / "audio" / "b.flac", tone(3.0, 24000, 880), 24000)
    sf.write(tmp_path / "audio" / "c.wav", tone(1.0, 8000, channels=2), 8000)
    return tmp_path


def test_bobwhite_style_label_column(folder: Path) -> None:
    (folder / "labels.csv").write_text(
        "path,label,site\naudio/a.wav,bobwhite_covey,S1\naudio/b.flac,none,S2\n"
    )
    clips = load_clip_table(folder / "labels.csv")
    assert [c.labels for c in clips] == [("bobwhite_covey",), ()]
    assert [c.site for c in clips] == ["S1", "S2"]
    assert clips[0].path == folder / "audio" / "a.wav"  # relative to the table's folder
    assert (clips[0].start_s, clips[0].end_s) == (0.0, 2.0)  # whole file by default
    assert clips[1].end_s == pytest.approx(3.0)
    assert clips[0].recording == "audio/a.wav"  # recording defaults to the path as written
    assert clips[1].is_negative


def test_labels_column_with_several_classes_spans_and_recording(folder: Path) -> None:
    (folder / "t.csv").write_text(
        "path,start_s,end_s,labels,recording\n"
        "audio/b.flac,0.5,1.5,sp_a;sp_b,rec1\n"
        "audio/b.flac,,2.0,,rec1\n"
        f"{folder / 'audio' / 'a.wav'},1.0,,sp_b,\n"
    )
    clips = load_clip_table(folder / "t.csv")
    assert clips[0].labels == ("sp_a", "sp_b")
    assert (clips[0].start_s, clips[0].end_s) == (0.5, 1.5)
    assert clips[1].labels == () and (clips[1].start_s, clips[1].end_s) == (0.0, 2.0)
    assert clips[2].path == folder / "audio" / "a.wav"  # absolute paths stay as they are
    assert (clips[2].start_s, clips[2].end_s) == (1.0, 2.0)
    assert clips[2].recording == str(folder / "audio" / "a.wav")
    assert [c.recording for c in clips[:2]] == ["rec1", "rec1"]
    assert classes_of(clips) == ["sp_a", "sp_b"]
    np.testing.assert_array_equal(label_matrix(clips, ["sp_a", "sp_b"]), [[1, 1], [0, 0], [0, 1]])


def test_parquet_table(folder: Path) -> None:
    pd.DataFrame({
        "path": ["audio/a.wav", "audio/c.wav"],
        "start_s": [0.0, np.nan],
        "end_s": [1.0, np.nan],
        "labels": ["x", "none"],
        "site": ["S1", None],
    }).to_parquet(folder / "t.parquet")
    clips = load_clip_table(folder / "t.parquet")
    assert [c.labels for c in clips] == [("x",), ()]
    assert clips[1].end_s == pytest.approx(1.0) and clips[1].site is None


def test_parse_labels() -> None:
    assert parse_labels(" a ; b;a ") == ("a", "b")
    assert parse_labels("none") == ()
    assert parse_labels("") == ()
    assert parse_labels(float("nan")) == ()


def test_every_bad_row_is_reported_at_once(folder: Path) -> None:
    (folder / "bad.csv").write_text(
        "path,start_s,end_s,label\n"
        "audio/a.wav,0,1,x\n"  # fine
        "audio/missing.wav,,,x\n"  # line 3: no such file
        "audio/a.wav,1.5,2.5,x\n"  # line 4: ends after the 2 s file
        "audio/a.wav,1.0,0.5,x\n"  # line 5: empty span
        "audio/a.wav,abc,,x\n"  # line 6: not a number
    )
    with pytest.raises(ClipTableError) as err:
        load_clip_table(folder / "bad.csv")
    problems = err.value.problems
    assert len(problems) == 4
    assert "row 3" in problems[0] and "not found" in problems[0]
    assert "row 4" in problems[1] and "outside" in problems[1]
    assert "row 5" in problems[2]
    assert "row 6" in problems[3] and "not numbers" in problems[3]
    assert "4 problem(s)" in str(err.value)


def test_missing_columns_are_named(folder: Path) -> None:
    (folder / "t.csv").write_text("file,label\naudio/a.wav,x\n")
    with pytest.raises(ClipTableError, match="no 'path' column"):
        load_clip_table(folder / "t.csv")
    (folder / "t.csv").write_text("path,species\naudio/a.wav,x\n")
    with pytest.raises(ClipTableError, match="no 'label' or 'labels' column"):
        load_clip_table(folder / "t.csv")


def test_load_audio_span_resampled_and_mono(folder: Path) -> None:
    (folder / "t.csv").write_text("path,start_s,end_s,label\naudio/b.flac,1.0,2.5,x\naudio/c.wav,,,none\n")
    clips = load_clip_table(folder / "t.csv")
    wave = load_audio(clips[0], 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) == 24000  # 1.5 s at 16 kHz
    # An 880 Hz tone stays an 880 Hz tone after resampling from 24 kHz.
    spectrum = np.abs(np.fft.rfft(wave))
    assert np.fft.rfftfreq(len(wave), 1 / 16000)[spectrum.argmax()] == pytest.approx(880, abs=2)
    stereo = load_audio(clips[1], 8000)
    assert stereo.shape == (8000,)
    np.testing.assert_allclose(stereo, tone(1.0, 8000), atol=1e-4)  # both channels averaged


def test_split_keeps_recordings_together_and_stratifies(folder: Path) -> None:
    rows = []
    for r in range(10):
        for k in range(3):  # three clips per recording
            rows.append(f"audio/b.flac,{k * 0.5},{k * 0.5 + 0.5},{'x' if r % 2 else 'none'},rec{r}")
    (folder / "t.csv").write_text("path,start_s,end_s,label,recording\n" + "\n".join(rows) + "\n")
    clips = load_clip_table(folder / "t.csv")
    train, val = split_by_recording(clips, 0.2, seed=3)
    assert sorted(train + val) == list(range(30))
    val_recs = {clips[i].recording for i in val}
    assert val_recs.isdisjoint({clips[i].recording for i in train})
    assert len(val_recs) == 2  # one of the five positive and one of the five negative recordings
    assert {clips[i].labels for i in val} == {("x",), ()}
    assert split_by_recording(clips, 0.2, seed=3) == (train, val)  # seeded


@pytest.mark.realdata
def test_bobwhite_labels_csv_reads_as_a_clip_table() -> None:
    table = DATA / "bobwhite" / "labels.csv"
    if not table.is_file():
        pytest.skip("shared/data/bobwhite is not present")
    clips = load_clip_table(table)
    assert len(clips) == 120
    assert {c.site for c in clips} == {"WLFW_AL", "WLFW_GA"}
    assert sum(1 for c in clips if c.labels == ("bobwhite_covey",)) == 60
    data = load_clip_set(clips[:2], ["bobwhite_covey"], 16000)
    assert [len(w) for w in data.waves] == [64000, 64000]  # 4.0 s at the model's 16 kHz
