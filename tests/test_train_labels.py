"""Every labelled-data layout: Raven selection tables, class folders, review labels, mixed sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pam.train.clips import ClipTableError
from pam.train.config import DataSection
from pam.train.labels import (
    AnnotatedRecording,
    Annotation,
    labels_in,
    load_class_folders,
    load_raven_clips,
    load_raven_recordings,
    load_sources,
    read_selection_table,
)

RATE = 8000
HEADER = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies\n"


def wav(path: Path, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(seconds * RATE), np.float32) + 0.01, RATE)
    return path


def raven(path: Path, rows: list[tuple]) -> Path:
    lines = [HEADER.rstrip("\n")]
    for i, (view, begin, end, species) in enumerate(rows, start=1):
        lines.append(f"{i}\t{view}\t1\t{begin}\t{end}\t500\t3000\t{species}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_raven_tables_give_multilabel_clips_and_negatives_between_events(tmp_path: Path) -> None:
    wav(tmp_path / "site1" / "rec.wav", 20.0)
    raven(tmp_path / "site1" / "rec.Table.1.selections.txt", [
        ("Spectrogram 1", 2.0, 3.0, "owl"),
        ("Spectrogram 1", 2.5, 3.5, "frog"),  # overlaps the owl: both clips carry both classes
        ("Spectrogram 1", 10.0, 16.0, "owl"),  # longer than the window: the clip is the selection
        ("Spectrogram 1", 18.0, 18.5, ""),  # an unnamed sound: no clip, and no negative there
    ])
    clips = load_raven_clips(tmp_path, window_s=3.0, negatives=10)
    events = [c for c in clips if c.labels]
    assert [(c.start_s, c.end_s) for c in events] == [(1.0, 4.0), (1.5, 4.5), (10.0, 16.0)]
    assert [set(c.labels) for c in events] == [{"owl", "frog"}, {"owl", "frog"}, {"owl"}]
    negatives = [(c.start_s, c.end_s) for c in clips if not c.labels]
    # 3-s grid windows (0, 3, ..., 15) that touch no selection: 0-3 has the owl, 3-6 the frog,
    # 9-18 the long owl; only 6-9 is free.
    assert negatives == [(6.0, 9.0)]
    assert {c.recording for c in clips} == {"site1/rec.wav"}  # one recording: kept on one side of a split
    assert all(c.path == tmp_path / "site1" / "rec.wav" for c in clips)


def test_raven_negative_grid_by_hand(tmp_path: Path) -> None:
    wav(tmp_path / "r.wav", 15.0)
    raven(tmp_path / "r.Table.1.selections.txt", [("Spectrogram 1", 4.0, 5.0, "owl"),
                                                 ("Spectrogram 1", 13.0, 13.5, "")])  # unnamed: not a negative
    clips = load_raven_clips(tmp_path, window_s=3.0, negatives=10)
    assert [(c.start_s, c.end_s) for c in clips if not c.labels] == [(0.0, 3.0), (6.0, 9.0), (9.0, 12.0)]
    assert [(c.start_s, c.end_s) for c in clips if c.labels] == [(3.0, 6.0)]
    only_two = load_raven_clips(tmp_path, window_s=3.0, negatives=2)
    assert [(c.start_s, c.end_s) for c in only_two if not c.labels] == [(0.0, 3.0), (9.0, 12.0)]  # spread out


def test_raven_waveform_view_rows_are_not_double_counted(tmp_path: Path) -> None:
    wav(tmp_path / "r.flac", 10.0)
    table = raven(tmp_path / "r.Table.1.selections.txt", [("Spectrogram 1", 1.0, 2.0, "owl"),
                                                         ("Waveform 1", 1.0, 2.0, "owl")])
    text = table.read_text().replace("\n2\tWaveform", "\n1\tWaveform")  # Raven repeats the selection number
    table.write_text(text)
    annotations, problems = read_selection_table(table, duration_s=10.0)
    assert problems == [] and annotations == [Annotation(1.0, 2.0, ("owl",))]


def test_raven_errors_name_every_bad_line_and_missing_recording(tmp_path: Path) -> None:
    wav(tmp_path / "a.wav", 5.0)
    raven(tmp_path / "a.Table.1.selections.txt", [("Spectrogram 1", 1.0, 2.0, "owl"),
                                                 ("Spectrogram 1", 4.0, 7.0, "owl"),  # line 3: past the end
                                                 ("Spectrogram 1", "x", 2.0, "owl")])  # line 4: not a number
    raven(tmp_path / "orphan.Table.1.selections.txt", [("Spectrogram 1", 1.0, 2.0, "owl")])
    with pytest.raises(ClipTableError) as err:
        load_raven_recordings(tmp_path)
    problems = err.value.problems
    assert len(problems) == 3
    assert any("a.Table.1.selections.txt line 3" in p and "outside the recording (0-5 s)" in p for p in problems)
    assert any("a.Table.1.selections.txt line 4" in p and "not numbers" in p for p in problems)
    assert any("orphan.Table.1.selections.txt" in p and "no recording named orphan" in p for p in problems)


def test_labels_in_needs_half_of_the_event_or_of_the_span() -> None:
    events = (Annotation(0.0, 1.0, ("a",)), Annotation(2.6, 3.4, ("b",)), Annotation(0.0, 10.0, ("c",)))
    assert labels_in((0.4, 3.4), events) == ("a", "b", "c")  # a: 0.6 of 1.0; b: all; c: the whole span
    assert labels_in((0.6, 3.6), events) == ("b", "c")  # a: only 0.4 of its 1.0 s
    assert labels_in((3.2, 6.2), events) == ("c",)  # b: 0.2 of 0.8


def test_class_folders(tmp_path: Path) -> None:
    wav(tmp_path / "owl" / "1.wav", 1.0)
    wav(tmp_path / "owl" / "deep" / "2.WAV", 2.0)
    wav(tmp_path / "none" / "3.wav", 1.5)
    (tmp_path / "owl" / "notes.txt").write_text("not audio")
    clips = load_class_folders(tmp_path, site="S9")
    assert [(c.recording, c.labels, c.end_s) for c in clips] == [
        ("none/3.wav", (), 1.5), ("owl/1.wav", ("owl",), 1.0), ("owl/deep/2.WAV", ("owl",), 2.0)]
    assert {c.site for c in clips} == {"S9"}
    (tmp_path / "owl" / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(ClipTableError, match="broken.wav: not readable audio"):
        load_class_folders(tmp_path)


def test_review_import_labels_and_mixed_sources(tmp_path: Path) -> None:
    wav(tmp_path / "rec" / "long.wav", 30.0)
    # The clip table `pam review-import` writes: path,start_s,end_s,label,site,recording.
    (tmp_path / "training_labels.csv").write_text(
        "path,start_s,end_s,label,site,recording\n"
        "rec/long.wav,3.0,6.0,owl,S1,rid1\n"
        "rec/long.wav,9.0,12.0,none,S1,rid1\n"
        "rec/long.wav,12.0,15.0,owl;frog,,rid1\n")
    wav(tmp_path / "folders" / "frog" / "f.wav", 3.0)
    data = DataSection.model_validate({"tables": [{"path": str(tmp_path / "training_labels.csv"), "site": "S2"}],
                                       "class_folders": [{"path": str(tmp_path / "folders"), "site": "S3"}]})
    clips = load_sources(data, window_s=3.0)
    assert [(c.labels, c.site, c.recording) for c in clips] == [
        (("owl",), "S1", "rid1"), ((), "S1", "rid1"), (("owl", "frog"), "S2", "rid1"), (("frog",), "S3", "frog/f.wav")]
    # Problems of every source come back together.
    (tmp_path / "bad.csv").write_text("path,label\nrec/missing.wav,owl\nrec/long.wav,owl\n")
    bad = DataSection.model_validate({"tables": [str(tmp_path / "bad.csv")],
                                      "raven": [str(tmp_path / "no-such-folder")]})
    with pytest.raises(ClipTableError) as err:
        load_sources(bad, window_s=3.0)
    text = str(err.value)
    assert "row 2: rec/missing.wav: file not found" in text and "no-such-folder" in text and "folder not found" in text


def test_annotated_recording_type() -> None:
    rec = AnnotatedRecording(Path("x.wav"), 10.0, (Annotation(1.0, 2.0, ("a",)),))
    assert rec.annotations[0].labels == ("a",) and rec.site is None
