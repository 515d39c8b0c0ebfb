"""Labelled data in the layouts people have: clip tables, Raven Pro selection tables, class folders.

Every layout becomes the same list of ``LabelledClip`` (multi-label: a clip carries every
class heard in it), so splitting, training and evaluation never care where labels came from.

* **Clip tables** (CSV/Parquet): ``pam.train.clips.load_clip_table``; this includes the
  ``training_labels.csv`` that ``pam review-import`` writes.
* **Raven Pro selection tables**: ``<name>.Table.1.selections.txt`` next to ``<name>.wav``
  (or ``.flac``...), anywhere under a folder. Each selection becomes a clip of at least the
  model's window, centred on the selection; its labels are every class whose selection
  covers at least half of it (or half of the clip). A selection without a name marks an
  unnamed sound: it gives no clip and no negative. The unannotated parts of each recording
  give negative clips (``raven_negatives`` per recording), which assumes every call of the
  classes is marked in the table.
* **Class folders**: ``ROOT/<class>/**/*.wav``; a folder named ``none``, ``negative`` or
  ``background`` holds negatives. One class per file (use a table for several).

All problems of one source are reported at once, each naming the file and line.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile as sf

from pam.io.audio import is_audio_name
from pam.train.clips import NEGATIVE, ClipTableError, LabelledClip, load_clip_table, parse_labels

RAVEN_LABEL_COLUMNS = ("Species", "Annotation", "Label", "Class", "Sound Type")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".aif", ".aiff")


@dataclass(frozen=True)
class Annotation:
    """One marked event in a recording."""

    start_s: float
    end_s: float
    labels: tuple[str, ...]


@dataclass(frozen=True)
class AnnotatedRecording:
    """A whole recording and its events: what soundscape evaluation scores."""

    path: Path
    duration_s: float
    annotations: tuple[Annotation, ...]
    site: str | None = None


def _duration(path: Path) -> float:
    info = sf.info(str(path))
    return info.frames / info.samplerate


def raven_stem(table: Path) -> str:
    """``rec.Table.1.selections.txt`` -> ``rec``; ``rec.selections.txt`` -> ``rec``."""
    name = table.name
    if ".Table." in name:
        return name.split(".Table.")[0]
    return name[: -len(".selections.txt")]


def find_raven_tables(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.selections.txt") if p.is_file() and not p.name.startswith("."))


def audio_for(table: Path) -> Path | None:
    """The recording a selection table belongs to: same name, any audio suffix, same folder."""
    stem = raven_stem(table)
    for p in sorted(table.parent.iterdir()):
        if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES and p.stem == stem:
            return p
    return None


def read_selection_table(table: Path, label_column: str | None = None,
                         duration_s: float | None = None) -> tuple[list[Annotation], list[str]]:
    """Annotations of a Raven table and a list of problems (``line N: ...``), never raising.

    Raven writes each selection once per view (spectrogram and waveform); the spectrogram
    rows are kept. Times must be numbers with ``0 <= begin < end <= duration``.
    """
    problems: list[str] = []
    try:
        with table.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
            header = list(rows[0].keys()) if rows else []
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"{table}: cannot read ({exc})"]
    if not rows:
        return [], []
    for col in ("Begin Time (s)", "End Time (s)"):
        if col not in header:
            return [], [f"{table}: no '{col}' column (columns: {header})"]
    column = label_column or next((c for c in RAVEN_LABEL_COLUMNS if c in header), None)
    if column is None or column not in header:
        wanted = label_column or " / ".join(RAVEN_LABEL_COLUMNS)
        return [], [f"{table}: no label column {wanted!r} (columns: {header})"]
    views = [str(r.get("View") or "") for r in rows]
    spectro = any(v.startswith("Spectrogram") for v in views)
    seen: set[str] = set()
    out: list[Annotation] = []
    for line, (row, view) in enumerate(zip(rows, views), start=2):
        if spectro and view and not view.startswith("Spectrogram"):
            continue
        sel = str(row.get("Selection") or line)
        if sel in seen:
            continue
        seen.add(sel)
        try:
            begin, end = float(row["Begin Time (s)"]), float(row["End Time (s)"])
        except (TypeError, ValueError):
            problems.append(f"{table} line {line}: begin/end time are not numbers "
                            f"({row['Begin Time (s)']!r}, {row['End Time (s)']!r})")
            continue
        if begin < 0 or end <= begin or (duration_s is not None and end > duration_s + 1e-3):
            limit = f" (0-{duration_s:g} s)" if duration_s is not None else ""
            problems.append(f"{table} line {line}: selection {begin:g}-{end:g} s is outside the recording{limit} "
                            "or empty")
            continue
        labels = parse_labels(row.get(column))  # empty: an unnamed sound, never a negative nor a clip
        out.append(Annotation(begin, min(end, duration_s) if duration_s is not None else end, labels))
    return out, problems


def load_raven_recordings(root: str | os.PathLike, label_column: str | None = None,
                          site: str | None = None) -> list[AnnotatedRecording]:
    """Every recording under ``root`` that has a selection table; raises naming every problem."""
    root = Path(root)
    if not root.is_dir():
        raise ClipTableError(root, ["folder not found"])
    tables = find_raven_tables(root)
    if not tables:
        raise ClipTableError(root, ["no Raven selection tables (*.selections.txt) found"])
    problems: list[str] = []
    out: list[AnnotatedRecording] = []
    for table in tables:
        audio = audio_for(table)
        if audio is None:
            problems.append(f"{table}: no recording named {raven_stem(table)}"
                            f"{{{','.join(AUDIO_SUFFIXES)}}} next to it")
            continue
        try:
            duration = _duration(audio)
        except Exception as exc:  # unreadable audio
            problems.append(f"{audio}: not readable audio ({str(exc).splitlines()[0][:80]})")
            continue
        annotations, bad = read_selection_table(table, label_column, duration)
        problems.extend(bad)
        out.append(AnnotatedRecording(audio, duration, tuple(annotations), site))
    if problems:
        raise ClipTableError(root, problems)
    return out


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def labels_in(span: tuple[float, float], annotations: tuple[Annotation, ...] | list[Annotation]) -> tuple[str, ...]:
    """Classes whose events cover at least half of the event or half of the span."""
    s0, s1 = span
    out: list[str] = []
    for a in annotations:
        need = 0.5 * min(a.end_s - a.start_s, s1 - s0)
        if _overlap(s0, s1, a.start_s, a.end_s) >= need > 0:
            out.extend(c for c in a.labels if c not in out)
    return tuple(out)


def recording_clips(rec: AnnotatedRecording, window_s: float, negatives: int, root: Path) -> list[LabelledClip]:
    """Training clips of one annotated recording: one per event, plus negatives between events."""
    name = str(rec.path.relative_to(root)) if rec.path.is_relative_to(root) else str(rec.path)
    clips: list[LabelledClip] = []
    for a in rec.annotations:
        if not a.labels:
            continue
        length = min(max(a.end_s - a.start_s, window_s), rec.duration_s)
        centre = (a.start_s + a.end_s) / 2
        start = min(max(0.0, centre - length / 2), rec.duration_s - length)
        span = (start, start + length)
        clips.append(LabelledClip(rec.path, span[0], span[1], labels_in(span, rec.annotations) or a.labels,
                                  rec.site, name))
    if negatives > 0 and rec.duration_s >= window_s:
        starts = np.arange(0.0, rec.duration_s - window_s + 1e-9, window_s)
        free = [float(s) for s in starts
                if not any(_overlap(s, s + window_s, a.start_s, a.end_s) > 0 for a in rec.annotations)]
        if free:
            pick = np.unique(np.round(np.linspace(0, len(free) - 1, min(negatives, len(free)))).astype(int))
            clips.extend(LabelledClip(rec.path, free[i], free[i] + window_s, (), rec.site, name) for i in pick)
    return clips


def load_raven_clips(root: str | os.PathLike, window_s: float, negatives: int = 20,
                     label_column: str | None = None, site: str | None = None) -> list[LabelledClip]:
    """Training clips from every Raven-annotated recording under ``root``."""
    root = Path(root)
    clips: list[LabelledClip] = []
    for rec in load_raven_recordings(root, label_column, site):
        clips.extend(recording_clips(rec, window_s, negatives, root))
    return clips


def load_class_folders(root: str | os.PathLike, site: str | None = None) -> list[LabelledClip]:
    """``ROOT/<class>/**/<audio>``: each file is one clip of its folder's class."""
    root = Path(root)
    if not root.is_dir():
        raise ClipTableError(root, ["folder not found"])
    clips: list[LabelledClip] = []
    problems: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        labels = () if folder.name.strip().lower() in NEGATIVE else (folder.name.strip(),)
        for f in sorted(folder.rglob("*")):
            if not f.is_file() or f.name.startswith(".") or not is_audio_name(f.name):
                continue
            try:
                duration = _duration(f)
            except Exception as exc:
                problems.append(f"{f}: not readable audio ({str(exc).splitlines()[0][:80]})")
                continue
            if duration <= 0:
                problems.append(f"{f}: empty recording")
                continue
            clips.append(LabelledClip(f, 0.0, duration, labels, site, str(f.relative_to(root))))
    if problems:
        raise ClipTableError(root, problems)
    if not clips:
        raise ClipTableError(root, ["no audio files in class folders (expected ROOT/<class>/*.wav)"])
    return clips


def load_sources(data, window_s: float) -> list[LabelledClip]:
    """Every clip named by a config's ``data`` section (``pam.train.config.DataSection``).

    A source's ``site`` fills in clips without one; problems of all sources are reported
    together.
    """
    clips: list[LabelledClip] = []
    errors: list[str] = []

    def add(loaded: list[LabelledClip], site: str | None) -> None:
        clips.extend(replace(c, site=c.site or site) for c in loaded)

    for src in data.tables:
        try:
            add(load_clip_table(src.path), src.site)
        except ClipTableError as exc:
            errors.append(str(exc))
    for src in data.raven:
        try:
            add(load_raven_clips(src.path, window_s, data.raven_negatives, data.raven_label_column, src.site), None)
        except ClipTableError as exc:
            errors.append(str(exc))
    for src in data.class_folders:
        try:
            add(load_class_folders(src.path, src.site), None)
        except ClipTableError as exc:
            errors.append(str(exc))
    if errors:
        raise ClipTableError("labelled data", [line for e in errors for line in e.splitlines()])
    return clips


def load_annotation_table(path: str | os.PathLike) -> list[AnnotatedRecording]:
    """An annotations CSV/Parquet (``path,start_s,end_s,label[,site]``): whole recordings to score.

    Rows name events; every recording named is scored whole, and the events say where the
    classes are. Rows with no class (``none``) mark a recording that has none.
    """
    rows = load_clip_table(path)
    by_path: dict[Path, list[LabelledClip]] = {}
    for c in rows:
        by_path.setdefault(c.path, []).append(c)
    out = []
    for p, events in by_path.items():
        out.append(AnnotatedRecording(p, _duration(p), tuple(Annotation(e.start_s, e.end_s, e.labels)
                                                             for e in events if e.labels), events[0].site))
    return out


def background_files(paths: list[str]) -> list[Path]:
    """Audio files named by ``data.backgrounds``: files as given, folders searched recursively."""
    out: list[Path] = []
    problems: list[str] = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                           and is_audio_name(f.name))
            if not found:
                problems.append(f"{p}: no audio files")
            out.extend(found)
        else:
            problems.append(f"{p}: not found")
    if problems:
        raise ClipTableError("data.backgrounds", problems)
    return out
