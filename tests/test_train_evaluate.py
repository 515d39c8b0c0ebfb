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

from models import every_window_model, model_listing_clips

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


def _clip_table(tmp_path: Path) -> tuple[Path, list]:
    from pam.train.clips import load_clip_table
    from train_data import write_clip_set

    table = write_clip_set(tmp_path / "data", 8)  # c000..c007, 0.75 s each, every other one 'chirp'
    return table, load_clip_table(table)


def test_evaluate_says_which_clips_the_model_was_trained_on(tmp_path: Path) -> None:
    import shutil

    table, clips = _clip_table(tmp_path)
    metrics = {"val": {"macro": {"ap": 0.5}}, "test": {"macro": {"ap": 0.8125}}}
    model = model_listing_clips(tmp_path / "m.pt", clips[:6], ["train", "train", "train", "val", "test", "test"],
                                metrics)
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["evaluate", str(table), "--model", str(model), "--out", str(out)],
                                env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    line = ("warning: 4 of 8 clips were in listed's own training data (3 training, 1 validation clips), so these "
            "figures are not held-out; its card's held-out figure: test macro AP 0.812 on 2 clips")
    lines = result.output.splitlines()
    assert line in lines
    # first: before the table (its header row: class, n, pos, AP, ...)
    assert lines.index(line) < next(i for i, text in enumerate(lines) if text.split()[:3] == ["class", "n", "pos"])
    assert lines[-1].startswith("macro AP: ")  # still the last line
    assert f"> {line}" in (out / "report.md").read_text()
    # the same audio moved elsewhere is still recognised (by content, not by path)
    shutil.copytree(tmp_path / "data", tmp_path / "moved")
    moved = CliRunner().invoke(app, ["evaluate", str(tmp_path / "moved" / "labels.csv"), "--model", str(model)],
                               env={"COLUMNS": "400"})
    assert moved.exit_code == 0 and line in moved.output.splitlines()
    # clips the card does not list: nothing to say
    unseen = model_listing_clips(tmp_path / "u.pt", clips[6:], ["train", "val"])
    (tmp_path / "data" / "first.csv").write_text("\n".join((tmp_path / "data" / "labels.csv").read_text()
                                                            .splitlines()[:7]) + "\n")
    quiet = CliRunner().invoke(app, ["evaluate", str(tmp_path / "data" / "first.csv"), "--model", str(unseen)])
    assert quiet.exit_code == 0 and "training data" not in quiet.output and "warning" not in quiet.output


def test_evaluate_reads_the_clip_list_from_a_sidecar_of_the_same_model_only(tmp_path: Path) -> None:
    from pam.detect.checkpoint import model_id_of
    from pam.train.clip_sidecar import sidecar_path

    table, clips = _clip_table(tmp_path)
    metrics = {"val": {"macro": {"ap": 0.5}}}
    model = model_listing_clips(tmp_path / "m.pt", clips[:3], ["train", "val", "test"], metrics, in_sidecar=True)
    assert "clips" not in load_checkpoint(model).card.training and sidecar_path(model) == tmp_path / "m.clips.json"
    result = CliRunner().invoke(app, ["evaluate", str(table), "--model", str(model)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert ("warning: 2 of 8 clips were in listed's own training data (1 training, 1 validation clips), so these "
            "figures are not held-out; its card's held-out figure: validation macro AP 0.500 on 1 clip") \
        in result.output.splitlines()
    # the checkpoint replaced by another model: the sidecar names the old id and is refused, evaluation goes on
    old_id = model_id_of(model)
    other = model_listing_clips(tmp_path / "other.pt", clips[:3], ["train", "val", "test"],
                                {"val": {"macro": {"ap": 0.25}}}, in_sidecar=True)
    sidecar_path(other).unlink()
    other.replace(model)
    new_id = model_id_of(model)
    assert new_id != old_id and sidecar_path(model).is_file()
    stale = CliRunner().invoke(app, ["evaluate", str(table), "--model", str(model)], env={"COLUMNS": "400"})
    assert stale.exit_code == 0 and "macro AP: " in stale.output.splitlines()[-1]
    assert (f"note: pam cannot tell whether these clips were listed's training data: {tmp_path / 'm.clips.json'}: "
            f"lists the clips of model {old_id}, not of m.pt (model {new_id}); remove it, or write it again with "
            f"python -m pam.train.backfill {model}") in stale.output.splitlines()


def test_seen_counts_each_item_once_and_only_overlapping_time(tmp_path: Path) -> None:
    from pam.detect.model import ModelCard
    from pam.train.clips import LabelledClip
    from pam.train.seen import CLIPS_KEY, clip_record, seen_in_training, seen_message

    rec = tmp_path / "rec.wav"
    sf.write(rec, np.zeros(8000 * 10, dtype=np.float32), 8000)
    listed = [LabelledClip(rec, 0.0, 3.0, ("a",), None, "rec"), LabelledClip(rec, 2.0, 5.0, ("a",), None, "rec"),
              LabelledClip(rec, 8.0, 9.0, (), None, "rec")]
    card = ModelCard(name="m", classes=["a"], window_s=1.0, training={CLIPS_KEY: clip_record(listed, ["train", "test", "val"])})
    items = pd.DataFrame({"path": [str(rec)] * 5 + [str(tmp_path / "gone.wav")],
                          "start_s": [0.0, 2.5, 4.0, 5.0, 7.0, 0.0], "end_s": [1.0, 3.5, 5.5, 8.0, 8.5, 3.0]})
    seen = seen_in_training(card.training[CLIPS_KEY], items)
    # 0-1: train; 2.5-3.5: train and test, counted as train; 4-5.5: test; 5-8: touches nothing
    # (ends where the val clip starts); 7-8.5: val; a missing file matches nothing
    assert seen.per_split == {"train": 2, "val": 1, "test": 1} and seen.seen == 3 and seen.items == 6
    assert seen_message(card, seen, "windows").startswith("warning: 3 of 6 windows were in m's own training data "
                                                          "(2 training, 1 validation windows)")
    assert seen_message(card, seen).endswith("its card has no held-out figure")
    only_test = seen_in_training(card.training[CLIPS_KEY], items.iloc[[2]])
    assert only_test.per_split["test"] == 1 and seen_message(card, only_test) is None  # its test split is held out


def test_cards_without_a_clip_list_say_so_only_when_trained_by_pam() -> None:
    from pam.detect.model import ModelCard
    from pam.train.seen import seen_in_training, seen_message

    items = pd.DataFrame({"path": ["x.wav"], "start_s": [0.0], "end_s": [1.0]})
    handmade = ModelCard(name="h", classes=["a"], window_s=1.0)
    assert seen_message(handmade, seen_in_training(None, items)) is None
    older = ModelCard(name="old", classes=["a"], window_s=1.0, training={"config": {}, "data_fingerprint": "f"})
    assert seen_message(older, seen_in_training(None, items)) == (
        "note: old's card does not list its training clips, so pam cannot tell whether these clips were among them")


@pytest.mark.realdata
def test_bundled_model_on_its_own_clips_says_so(shared_data: Path) -> None:
    card = load_checkpoint().card
    per_split = card.training["data"]["per_split"]
    result = CliRunner().invoke(app, ["evaluate", str(shared_data / "bobwhite" / "labels.csv")], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    n = per_split["train"] + per_split["val"]
    val_ap = card.metrics["val"]["macro"]["ap"]
    assert (f"warning: {n} of {n} clips were in bobwhite-v2's own training data ({per_split['train']} training, "
            f"{per_split['val']} validation clips), so these figures are not held-out; its card's held-out figure: "
            f"validation macro AP {val_ap:.3f} on {per_split['val']} clips") in result.output.splitlines()
