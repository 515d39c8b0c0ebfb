"""Evaluation: reports against hand-computed values, soundscape windows against annotations, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner

from pam.detect.checkpoint import load_checkpoint
from pam.cli.main import app
from pam.train.evaluate import evaluate_recordings, report_frame, to_markdown, window_truth
from pam.train.labels import AnnotatedRecording, Annotation, load_raven_recordings

from models import every_window_model

# Ranked: 0.9 pos, 0.8 neg, 0.7 pos, 0.6 pos, 0.5 neg (AP 29/36, see test_train_metrics).
Y = np.array([1, 0, 1, 1, 0])
S = np.array([0.9, 0.8, 0.7, 0.6, 0.5])


def test_report_rows_and_macro_means_by_hand() -> None:
    y = np.c_[Y, [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]
    s = np.c_[S, [0.9, 0.8, 0.3, 0.2, 0.1], S]
    rep = report_frame(y, s, ["a", "b", "c"], {"a": 0.7, "b": 0.85}, target_precision=0.9)
    a, b, c, macro = (rep.iloc[i] for i in range(4))
    assert a["ap"] == pytest.approx(29 / 36) and b["ap"] == pytest.approx(1.0)
    assert a["roc_auc"] == pytest.approx(4 / 6) and b["roc_auc"] == pytest.approx(1.0)
    assert (a["tp"], a["fp"], a["fn"]) == (2, 1, 1) and a["precision"] == pytest.approx(2 / 3)
    assert (b["tp"], b["fp"], b["fn"]) == (1, 0, 1) and b["recall"] == pytest.approx(0.5)
    assert a["recall_at_target"] == pytest.approx(1 / 3) and b["recall_at_target"] == pytest.approx(1.0)
    assert np.isnan(c["ap"]) and c["threshold"] == 0.5  # no positives: undefined, default threshold
    # Macro: the mean over classes that have positives (a and b), never over c.
    assert macro["class"] == "macro" and macro["ap"] == pytest.approx((29 / 36 + 1.0) / 2)
    assert macro["f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert macro["positives"] == 5
    text = to_markdown(rep, "test")
    assert "| a | 5 | 3 | 0.806 | 0.667 | 0.333 | 0.700 | 0.667 | 0.667 | 0.667 |" in text
    assert "**macro**" in text and "| c | 5 | 0 | – |" in text


def test_window_truth_counts_any_overlap_with_an_annotation_of_the_class() -> None:
    starts = np.array([0.0, 1.5, 3.0, 4.5, 6.0])
    ends = starts + 3.0
    rec = AnnotatedRecording(Path("r.wav"), 9.0, (Annotation(4.0, 4.2, ("a",)), Annotation(8.9, 9.0, ("b", "a")),
                                                  Annotation(3.0, 4.0, ("x",))))
    y = window_truth(starts, ends, rec, ["a", "b"])
    # a: 4.0-4.2 lies in [1.5,4.5] and [3,6]; 8.9-9.0 in [6,9]. b: only [6,9]. Class x is not the model's.
    np.testing.assert_array_equal(y[:, 0], [0, 1, 1, 0, 1])
    np.testing.assert_array_equal(y[:, 1], [0, 0, 0, 0, 1])
    touching = window_truth(np.array([4.2]), np.array([7.2]), rec, ["a"])
    assert touching[0, 0] == 0  # a window that only touches the end of an event does not overlap it


def write_soundscape(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sf.write(folder / "dawn.wav", rng.normal(0, 0.05, 12 * 8000).astype(np.float32), 8000)
    (folder / "dawn.Table.1.selections.txt").write_text(
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tSpecies\n"
        "1\tSpectrogram 1\t1\t4.0\t4.2\t500\t3000\ta\n"
        "2\tSpectrogram 1\t1\t10.9\t11.5\t500\t3000\tb\n")
    return folder


def test_soundscape_evaluation_uses_detection_windows(tmp_path: Path) -> None:
    model = load_checkpoint(every_window_model(tmp_path / "m.pt"))  # 3-s windows, classes a and b
    recs = load_raven_recordings(write_soundscape(tmp_path / "scape"))
    report, windows = evaluate_recordings(model, recs, hop_s=1.5)
    # 12 s, 3-s windows every 1.5 s: starts 0, 1.5, ..., 9 (the window at 9 s reaches the end): 7 windows.
    assert windows["start_s"].tolist() == [0.0, 1.5, 3.0, 4.5, 6.0, 7.5, 9.0]
    assert windows["true_a"].tolist() == [False, True, True, False, False, False, False]
    assert windows["true_b"].tolist() == [False] * 6 + [True]
    assert report.set_index("class").loc[["a", "b"], "positives"].tolist() == [2, 1]
    assert (report["level"] == "windows").all()


def test_evaluate_command_prints_macro_ap_and_writes_reports(tmp_path: Path) -> None:
    model = every_window_model(tmp_path / "m.pt")
    scape = write_soundscape(tmp_path / "scape")
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["evaluate", str(scape), "--model", str(model), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "macro AP: 0." in result.output or "macro AP: 1.000" in result.output
    assert "(soundscapes)" in result.output
    report = pd.read_parquet(out / "report.parquet")
    assert report["class"].tolist() == ["a", "b", "macro"]
    assert (out / "report.md").read_text().startswith("## every-window")
    # A clip table: each clip scored as the max over its windows.
    (tmp_path / "clips.csv").write_text("path,start_s,end_s,label\nscape/dawn.wav,3.0,6.0,a\nscape/dawn.wav,6.0,9.0,none\n")
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "clips.csv"), "--model", str(model)])
    assert result.exit_code == 0, result.output
    assert "(clips)" in result.output
    assert "macro AP: 1.000" in result.output or "macro AP: 0.500" in result.output  # two clips, one positive
    (tmp_path / "typo.csv").write_text("path,start_s,end_s,label\nscape/dawn.wav,3.0,6.0,A\n"
                                       "scape/dawn.wav,6.0,9.0,none\n")
    typo = CliRunner().invoke(app, ["evaluate", str(tmp_path / "typo.csv"), "--model", str(model)])
    assert typo.exit_code == 2 and "labels found: A (1)" in typo.output.replace("\n", "")
    missing = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nope.csv"), "--model", str(model)])
    assert missing.exit_code == 2 and "not found" in missing.output
