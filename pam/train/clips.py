"""Labelled clip tables and their audio.

A clip table names spans of recordings and the classes heard in each; it is how training
data enters pam. All bad rows are reported at once (a table of hundreds of clips should
not have to be fixed one error per run).

Columns (CSV or Parquet):

* ``path`` (required): audio file; a relative path resolves against the table's folder.
* ``start_s``/``end_s`` (optional): the span; empty means the file's start / end.
* ``label`` or ``labels`` (one required): class names separated by ``;``. ``none`` or empty
  marks a negative clip (no class present).
* ``site`` (optional): site or site group, used for cross-site evaluation.
* ``recording`` (optional): the source recording, so that splits keep clips of one
  recording together; defaults to the path as written.

The bobwhite ``labels.csv`` (``path,label,site``) is one such table.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from pam.io.audio import read_span, resample

NEGATIVE = {"", "none", "nan", "null", "negative", "background"}


class ClipTableError(ValueError):
    """A clip table that cannot be used; the message lists every bad row."""

    def __init__(self, path: str | os.PathLike, problems: list[str]):
        self.problems = problems
        head = f"{path}: {len(problems)} problem(s) in the clip table"
        super().__init__("\n".join([head] + [f"  {p}" for p in problems]))


@dataclass(frozen=True)
class LabelledClip:
    """A span of a recording and the classes present in it (empty tuple: none)."""

    path: Path
    start_s: float
    end_s: float
    labels: tuple[str, ...]
    site: str | None
    recording: str

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def is_negative(self) -> bool:
        return not self.labels


def parse_labels(value: object) -> tuple[str, ...]:
    """``'a;b'`` -> ``('a', 'b')``; ``none``/empty/NaN -> ``()``. Order kept, duplicates dropped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ()
    out: list[str] = []
    for part in str(value).split(";"):
        name = part.strip()
        if name.lower() in NEGATIVE:
            continue
        if name not in out:
            out.append(name)
    return tuple(out)


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    if suffix in (".csv", ".txt"):
        return pd.read_csv(path, dtype={"path": str, "site": str, "recording": str, "label": str, "labels": str},
                           keep_default_na=False, na_values=[""])
    raise ClipTableError(path, [f"unknown table format {suffix!r}; use .csv or .parquet"])


def _optional_float(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return None
    f = float(value)  # ValueError for text that is not a number
    return None if math.isnan(f) else f


def _text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    s = str(value).strip()
    return s or None


def load_clip_table(path: str | os.PathLike) -> list[LabelledClip]:
    """Read and check a clip table; raises ClipTableError naming every bad row.

    Checks: the file exists and is readable audio, times are numbers, ``0 <= start < end``
    and the span lies inside the file (to within one millisecond).
    """
    path = Path(path)
    if not path.is_file():
        raise ClipTableError(path, ["table file not found"])
    df = _read_table(path)
    if "path" not in df.columns:
        raise ClipTableError(path, [f"no 'path' column (columns: {list(df.columns)})"])
    label_col = "labels" if "labels" in df.columns else "label" if "label" in df.columns else None
    if label_col is None:
        raise ClipTableError(path, [f"no 'label' or 'labels' column (columns: {list(df.columns)})"])
    if df.empty:
        raise ClipTableError(path, ["the table has no rows"])
    base = path.parent
    clips: list[LabelledClip] = []
    problems: list[str] = []
    durations: dict[Path, float | None] = {}
    for i, row in enumerate(df.to_dict("records")):
        where = f"row {i + 2 if path.suffix.lower() == '.csv' else i}"  # CSV: line number in the file
        raw = _text(row.get("path"))
        if raw is None:
            problems.append(f"{where}: empty path")
            continue
        audio = Path(raw) if Path(raw).is_absolute() else base / raw
        if audio not in durations:
            try:
                info = sf.info(str(audio))
                durations[audio] = info.frames / info.samplerate
            except Exception as exc:  # missing, unreadable or not audio
                durations[audio] = None
                reason = "file not found" if not audio.exists() else f"not readable audio ({str(exc).splitlines()[0][:80]})"
                problems.append(f"{where}: {raw}: {reason}")
                continue
        elif durations[audio] is None:
            problems.append(f"{where}: {raw}: file not usable (see above)")
            continue
        length = durations[audio]
        try:
            start = _optional_float(row.get("start_s"))
            end = _optional_float(row.get("end_s"))
        except (TypeError, ValueError):
            problems.append(f"{where}: {raw}: start_s/end_s are not numbers ({row.get('start_s')!r}, {row.get('end_s')!r})")
            continue
        start = 0.0 if start is None else start
        end = length if end is None else end
        tol = 1e-3
        if start < 0 or end <= start or end > length + tol:
            problems.append(f"{where}: {raw}: span {start:g}-{end:g} s is outside the file (0-{length:g} s) or empty")
            continue
        clips.append(LabelledClip(
            path=audio,
            start_s=float(start),
            end_s=float(min(end, length)),
            labels=parse_labels(row.get(label_col)),
            site=_text(row.get("site")),
            recording=_text(row.get("recording")) or raw,
        ))
    if problems:
        raise ClipTableError(path, problems)
    return clips


def load_audio(clip: LabelledClip, sample_rate: int) -> np.ndarray:
    """The clip's span as float32 mono at ``sample_rate`` (channels averaged)."""
    with sf.SoundFile(str(clip.path)) as snd:
        rate = int(snd.samplerate)
        lo = int(round(clip.start_s * rate))
        hi = min(int(round(clip.end_s * rate)), snd.frames)
        wave = read_span(snd, lo, hi - lo)
    if rate != sample_rate:
        wave = resample(torch.from_numpy(wave), rate, sample_rate).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32)


def classes_of(clips: list[LabelledClip]) -> list[str]:
    """Every class named in the clips, sorted (the order of a model's head)."""
    return sorted({c for clip in clips for c in clip.labels})


def label_matrix(clips: list[LabelledClip], classes: list[str]) -> np.ndarray:
    """Multi-hot targets [n_clips, n_classes] (float32); classes not in ``classes`` are ignored."""
    index = {c: k for k, c in enumerate(classes)}
    y = np.zeros((len(clips), len(classes)), dtype=np.float32)
    for i, clip in enumerate(clips):
        for c in clip.labels:
            if c in index:
                y[i, index[c]] = 1.0
    return y


@dataclass
class ClipSet:
    """Clips held in memory at the model's rate: what ``fit`` trains and scores on."""

    waves: list[np.ndarray]
    targets: np.ndarray  # [n, n_classes] float32
    classes: list[str]
    sample_rate: int
    clips: list[LabelledClip] | None = None

    def __len__(self) -> int:
        return len(self.waves)

    def subset(self, index: list[int] | np.ndarray) -> "ClipSet":
        index = [int(i) for i in index]
        return ClipSet(
            waves=[self.waves[i] for i in index],
            targets=self.targets[index],
            classes=list(self.classes),
            sample_rate=self.sample_rate,
            clips=[self.clips[i] for i in index] if self.clips is not None else None,
        )

    def negatives(self) -> "ClipSet":
        """Clips with no class present: background material for overlay."""
        return self.subset(np.flatnonzero(self.targets.sum(axis=1) == 0))


class UnknownLabels(ValueError):
    """Labelled clips that name none of the model's classes."""


def require_known_labels(clips: list[LabelledClip], classes: list[str]) -> None:
    """Refuse labelled data in which no clip carries any of the model's classes but some carry
    other labels: a misspelt class would otherwise turn every positive into a negative."""
    known = set(classes)
    if any(set(c.labels) & known for c in clips):
        return
    foreign: dict[str, int] = {}
    for c in clips:
        for label in c.labels:
            foreign[label] = foreign.get(label, 0) + 1
    if foreign:
        found = ", ".join(f"{k} ({v})" for k, v in sorted(foreign.items()))
        raise UnknownLabels(f"none of the {len(clips)} clips is labelled with the model's classes "
                             f"({', '.join(classes)}); labels found: {found}")


def load_clip_set(clips: list[LabelledClip], classes: list[str], sample_rate: int) -> ClipSet:
    """Read every clip's audio into memory (fine for the thousands of clips of a training set)."""
    return ClipSet(
        waves=[load_audio(c, sample_rate) for c in clips],
        targets=label_matrix(clips, classes),
        classes=list(classes),
        sample_rate=sample_rate,
        clips=list(clips),
    )
