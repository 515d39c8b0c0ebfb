"""Evaluate a detector on labelled clips or on annotated soundscapes, and write the report.

Two levels, both scored the way detection scores recordings:

* **clips**: each clip's score is the maximum over model windows every ``hop_s`` seconds
  covering it; the truth is the clip's labels;
* **soundscapes**: whole recordings are cut into detection windows (``pam.detect.windows``,
  ``pam.detect.dataset.read_windows``: the same windows and resampling as ``pam detect``); a
  window is positive for a class when it overlaps an annotation of that class.

Per class: average precision, ROC-AUC, recall at the target precision, and precision /
recall / F1 at the model's (calibrated) threshold; the ``macro`` row averages classes that
have positives. Reports are written as Parquet and as a Markdown table.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from pam.detect.checkpoint import LoadedModel
from pam.detect.dataset import read_windows
from pam.train.clips import ClipSet, LabelledClip, load_clip_set, load_clip_table, require_known_labels
from pam.train.fit import score_clips
from pam.train.labels import AnnotatedRecording, find_raven_tables, load_annotation_table, load_raven_recordings
from pam.train.labels import load_class_folders
from pam.train.metrics import average_precision, precision_recall_f1, recall_at_precision, roc_auc
from pam.detect.windows import window_grid

REPORT_COLUMNS = ["class", "level", "items", "positives", "negatives", "ap", "roc_auc", "target_precision",
                  "recall_at_target", "threshold", "precision", "recall", "f1", "tp", "fp", "fn"]


def report_frame(y_true: np.ndarray, scores: np.ndarray, classes: list[str], thresholds: dict[str, float],
                 target_precision: float = 0.9, level: str = "clips") -> pd.DataFrame:
    """One row per class plus a ``macro`` row (means over the classes that have positives)."""
    y_true = np.asarray(y_true).reshape(len(y_true), -1)
    scores = np.asarray(scores, dtype=float).reshape(len(scores), -1)
    rows = []
    for k, c in enumerate(classes):
        y, s = y_true[:, k], scores[:, k]
        t = float(thresholds.get(c, 0.5))
        at = precision_recall_f1(y, s, t)
        rows.append({"class": c, "level": level, "items": len(y), "positives": int(y.sum()),
                     "negatives": int(len(y) - y.sum()), "ap": average_precision(y, s), "roc_auc": roc_auc(y, s),
                     "target_precision": target_precision, "recall_at_target": recall_at_precision(y, s, target_precision),
                     "threshold": t, "precision": at.precision if at.tp + at.fp else math.nan,
                     "recall": at.recall, "f1": at.f1, "tp": at.tp, "fp": at.fp, "fn": at.fn})
    frame = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    scored = frame[frame["positives"] > 0]
    macro = {"class": "macro", "level": level, "items": len(y_true), "positives": int(frame["positives"].sum()),
             "negatives": int(frame["negatives"].sum()), "target_precision": target_precision,
             "threshold": math.nan, "tp": int(frame["tp"].sum()), "fp": int(frame["fp"].sum()),
             "fn": int(frame["fn"].sum())}
    for col in ("ap", "roc_auc", "recall_at_target", "precision", "recall", "f1"):
        macro[col] = float(scored[col].mean()) if len(scored) and scored[col].notna().any() else math.nan
    return pd.concat([frame, pd.DataFrame([macro], columns=REPORT_COLUMNS)], ignore_index=True)


def macro_ap(report: pd.DataFrame) -> float:
    return float(report.loc[report["class"] == "macro", "ap"].iloc[0])


def evaluate_clip_set(model: LoadedModel, data: ClipSet, hop_s: float = 0.5, thresholds: dict[str, float] | None = None,
                      target_precision: float = 0.9) -> tuple[pd.DataFrame, np.ndarray]:
    """Report and clip scores [n, classes] for clips already in memory at the model's rate."""
    card = model.card
    scores = score_clips(model.net, data, card.window_s, hop_s=hop_s)
    th = card.thresholds if thresholds is None else thresholds
    return report_frame(data.targets, scores, card.classes, th, target_precision, "clips"), scores


def evaluate_clips(model: LoadedModel, clips: list[LabelledClip], hop_s: float = 0.5,
                   thresholds: dict[str, float] | None = None, target_precision: float = 0.9
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Report and a per-clip score table for labelled clips (labels of other classes are ignored)."""
    require_known_labels(clips, model.card.classes)
    data = load_clip_set(clips, model.card.classes, model.card.sample_rate)
    report, scores = evaluate_clip_set(model, data, hop_s, thresholds, target_precision)
    items = pd.DataFrame({"path": [str(c.path) for c in clips], "start_s": [c.start_s for c in clips],
                          "end_s": [c.end_s for c in clips], "labels": [";".join(c.labels) for c in clips],
                          "site": [c.site for c in clips]})
    for k, c in enumerate(model.card.classes):
        items[f"score_{c}"] = scores[:, k]
    return report, items


def score_recording(model: LoadedModel, path: str | os.PathLike, hop_s: float, batch_size: int = 256
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(window starts s, window ends s, scores [windows, classes]) exactly as detection windows it."""
    card = model.card
    dev = next(model.net.parameters()).device
    with sf.SoundFile(str(path)) as snd:
        grid = window_grid(snd.frames, snd.samplerate, card.window_s, hop_s)
        outs, starts = [], []
        for st, windows in read_windows(snd, grid, card.sample_rate, card.window_s):
            starts.append(st)
            with torch.inference_mode():
                for i in range(0, len(windows), batch_size):
                    outs.append(torch.sigmoid(model.net(windows[i:i + batch_size].to(dev)).float()).cpu())
    n_classes = len(card.classes)
    scores = torch.cat(outs).numpy() if outs else np.zeros((0, n_classes), dtype=np.float32)
    start = np.concatenate(starts) / grid.sample_rate if starts else np.zeros(0)
    end = np.minimum(start + card.window_s, grid.frames / grid.sample_rate)
    return start, end, scores


def window_truth(starts: np.ndarray, ends: np.ndarray, rec: AnnotatedRecording, classes: list[str],
                 min_overlap_s: float = 0.0) -> np.ndarray:
    """[windows, classes]: 1 where the window overlaps an annotation of the class by more than ``min_overlap_s``."""
    y = np.zeros((len(starts), len(classes)), dtype=np.float32)
    index = {c: k for k, c in enumerate(classes)}
    for a in rec.annotations:
        overlap = np.minimum(ends, a.end_s) - np.maximum(starts, a.start_s)
        hit = overlap > min_overlap_s
        for c in a.labels:
            if c in index:
                y[hit, index[c]] = 1.0
    return y


def evaluate_recordings(model: LoadedModel, recordings: list[AnnotatedRecording], hop_s: float = 1.5,
                        thresholds: dict[str, float] | None = None, target_precision: float = 0.9,
                        min_overlap_s: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Window-level report over annotated soundscapes, and the per-window table."""
    classes = model.card.classes
    frames, ys, ss = [], [], []
    for rec in recordings:
        start, end, scores = score_recording(model, rec.path, hop_s)
        y = window_truth(start, end, rec, classes, min_overlap_s)
        frame = pd.DataFrame({"path": str(rec.path), "start_s": start, "end_s": end, "site": rec.site})
        for k, c in enumerate(classes):
            frame[f"score_{c}"] = scores[:, k]
            frame[f"true_{c}"] = y[:, k].astype(bool)
        frames.append(frame)
        ys.append(y)
        ss.append(scores)
    y = np.concatenate(ys) if ys else np.zeros((0, len(classes)))
    s = np.concatenate(ss) if ss else np.zeros((0, len(classes)))
    th = model.card.thresholds if thresholds is None else thresholds
    return report_frame(y, s, classes, th, target_precision, "windows"), pd.concat(frames, ignore_index=True)


def _cell(v: object) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def to_markdown(report: pd.DataFrame, title: str | None = None, notes: list[str] | None = None) -> str:
    """A readable table of a report (one line per class, the macro means last), then ``notes``."""
    target = report["target_precision"].iloc[0] if len(report) else 0.9
    cols = [("class", "class"), ("items", "items"), ("positives", "positives"), ("ap", "AP"),
            ("roc_auc", "ROC-AUC"), ("recall_at_target", f"recall at P {target:g}"), ("threshold", "threshold"),
            ("precision", "precision"), ("recall", "recall"), ("f1", "F1")]
    lines = [f"## {title}", ""] if title else []
    lines += ["| " + " | ".join(h for _, h in cols) + " |", "| " + " | ".join("---" for _ in cols) + " |"]
    for r in report.to_dict("records"):
        cells = [_cell(r[k]) for k, _ in cols]
        if r["class"] == "macro":
            cells = [f"**{c}**" if c != "–" else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"> {n}" for n in notes] if notes else []
    return "\n".join(lines) + "\n"


def write_report(report: pd.DataFrame, out_dir: str | os.PathLike, name: str, title: str | None = None,
                 items: pd.DataFrame | None = None, notes: list[str] | None = None) -> dict[str, str]:
    """``<name>.parquet``, ``<name>.md`` (and ``<name>-items.parquet``, the scores) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"parquet": str(out / f"{name}.parquet"), "markdown": str(out / f"{name}.md")}
    report.to_parquet(paths["parquet"], index=False)
    Path(paths["markdown"]).write_text(to_markdown(report, title, notes))
    if items is not None:
        paths["items"] = str(out / f"{name}-items.parquet")
        items.to_parquet(paths["items"], index=False)
    return paths


def detect_mode(path: Path) -> str:
    """``clips`` for a table or class folders, ``soundscapes`` for a folder with Raven tables."""
    if path.is_file():
        return "clips"
    if path.is_dir() and find_raven_tables(path):
        return "soundscapes"
    return "clips"


def evaluate_path(model: LoadedModel, data: str | os.PathLike, mode: str = "auto", hop_s: float | None = None,
                  target_precision: float = 0.9, raven_label_column: str | None = None,
                  min_overlap_s: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Evaluate on DATA: a clip table, class folders, a Raven-annotated folder, or (with
    ``mode='soundscapes'``) an annotations table whose recordings are scored whole.

    Returns (report, per-item scores, mode used).
    """
    data = Path(data)
    if mode == "auto":
        mode = detect_mode(data)
    if mode == "clips":
        clips = load_clip_table(data) if data.is_file() else load_class_folders(data)
        report, items = evaluate_clips(model, clips, hop_s or 0.5, target_precision=target_precision)
    elif mode == "soundscapes":
        recs = load_annotation_table(data) if data.is_file() else load_raven_recordings(data, raven_label_column)
        report, items = evaluate_recordings(model, recs, hop_s or 1.5, target_precision=target_precision,
                                            min_overlap_s=min_overlap_s)
    else:
        raise ValueError(f"unknown evaluation mode {mode!r} (auto | clips | soundscapes)")
    return report, items, mode
