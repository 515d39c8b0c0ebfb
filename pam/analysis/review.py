"""Checking detections by ear: sample them, cut clips, read back the verdicts.

``make_review`` samples events per species (``pam.analysis.events``: the overlapping detection windows
of one call joined; at random or the top peak scores), cuts each event to a short WAV clip
(seek + one block read, so a 24-hour recording is never loaded whole) and writes
``review.csv`` with an empty ``verdict`` column to fill in with true / false / unsure. Each
row says which call the clip holds (``event_start_s``, ``event_end_s``, ``event_windows``,
``event_start_time``; the clip's file is named after the event's start) and where the clip
begins in the recording (``clip_start_s``), and names the event's peak window
(``peak_start_s``, ``peak_end_s``, ``peak_score``), a detection of the store, which the
verdict is stored against. Columns: docs/analysis.md.

``import_review`` stores the filled-in CSV as verified labels (``STORE/labels/verified-*.parquet``);
the summaries turn them into per-species precision, and ``training_labels`` turns them into a
clip table (``path,start_s,end_s,label,site,recording``) that ``pam.train.clips.load_clip_table``
reads: a window verified true for a species is labelled with it, a window verified false for
every species it was shown for is a negative (``none``), unsure verdicts are left out.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import soundfile as sf

import pam.store.schemas as schemas
from pam.analysis.csv_times import iso_ms
from pam.analysis.events import query_events
from pam.store.store import Store, write_parquet_atomic

REVIEW_COLUMNS = ["clip", "species", "verdict", "notes", "site", "recording", "clip_start_s", "event_start_time",
                  "event_start_s", "event_end_s", "event_windows", "peak_start_s", "peak_end_s", "peak_score",
                  "model_id", "recording_id"]
# review CSVs written before the columns were renamed (start_time was the peak window's)
OLD_REVIEW_NAMES = {"start_s": "peak_start_s", "end_s": "peak_end_s", "score": "peak_score", "windows": "event_windows",
                    "start_time": "peak_start_time"}
# A clip holds its whole event, or this many seconds of it around the peak window (plus the pad)
MAX_EVENT_CLIP_S = 30.0
VERDICTS = {
    "true": "true", "t": "true", "yes": "true", "y": "true", "1": "true",
    "false": "false", "f": "false", "no": "false", "n": "false", "0": "false",
    "unsure": "unsure", "u": "unsure", "?": "unsure", "maybe": "unsure",
}
WAV_SUBTYPES = {"PCM_16", "PCM_24", "PCM_32", "FLOAT"}


class ReviewError(ValueError):
    """A review CSV that cannot be imported; the message lists every bad row."""


@dataclass
class ReviewSet:
    csv: Path
    clips: int
    notes: list[str] = field(default_factory=list)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def sample_detections(det: pd.DataFrame, n: int, strategy: str = "random", seed: int = 0,
                      score: str = "score") -> pd.DataFrame:
    """Up to ``n`` rows per species: a seeded random sample, or the ``n`` highest of column ``score``.

    Works on detections and on events (``score="peak_score"``).
    """
    if strategy not in ("random", "top"):
        raise ValueError(f"strategy must be 'random' or 'top', got {strategy!r}")
    picks = []
    for _label, group in det.groupby("label", sort=True):
        if strategy == "top":
            picks.append(group.sort_values([score, "start_time"], ascending=[False, True], kind="stable").head(n))
        else:
            picks.append(group.sample(n=min(n, len(group)), random_state=seed))
    return pd.concat(picks, ignore_index=True) if picks else det.head(0)


def cut_clip(source: sf.SoundFile, start_s: float, end_s: float, pad_s: float, out: Path) -> tuple[float, float]:
    """Write [start - pad, end + pad] (clamped to the file) of an open file to ``out``; returns the span."""
    rate = source.samplerate
    lo = max(0, int(round((start_s - pad_s) * rate)))
    hi = min(source.frames, int(round((end_s + pad_s) * rate)))
    source.seek(lo)
    block = source.read(max(0, hi - lo), dtype="float32", always_2d=True)
    subtype = source.subtype if source.subtype in WAV_SUBTYPES else "PCM_16"
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out), block, rate, subtype=subtype, format="WAV")
    return lo / rate, hi / rate


def clip_span(event: pd.Series | tuple, max_s: float = MAX_EVENT_CLIP_S) -> tuple[float, float]:
    """Seconds of the recording an event's clip covers (before padding): the event, or ``max_s`` of it
    centred on its peak window when the event is longer."""
    start_s, end_s = float(event.start_s), float(event.end_s)
    if end_s - start_s <= max_s:
        return start_s, end_s
    centre = (float(event.peak_start_s) + float(event.peak_end_s)) / 2
    lo = min(max(start_s, centre - max_s / 2), end_s - max_s)
    return lo, lo + max_s


def make_review(store: Store, out_dir: Path, species: Sequence[str] | None = None, n: int = 50,
                strategy: str = "random", seed: int = 0, pad_s: float = 1.0, min_score: float | None = None,
                model_id: str | None = None, sites: Sequence[str] | None = None, start: str | None = None,
                end: str | None = None) -> ReviewSet:
    """Sample events per species, cut them to clips under ``out_dir/clips`` and write ``review.csv``.

    Overlapping windows of one call are one event, reviewed once: ``strategy="top"`` ranks
    events by their peak score, ``min_score`` keeps events whose peak reaches it. The clip
    holds the event (at most ``MAX_EVENT_CLIP_S`` of it, around the peak) plus ``pad_s``.

    Refuses an ``out_dir`` inside a scanned dump, and one whose ``review.csv`` already holds
    verdicts (import it first, or choose another folder), so no reviewing work is overwritten.
    """
    from pam.io.manifest import check_outside_dumps

    out_dir = Path(out_dir)
    check_outside_dumps(store, out_dir, "review folder")
    refuse_filled_review(out_dir)
    found = query_events(store, species=species, sites=sites, start=start, end=end, min_score=min_score,
                         model_id=model_id)
    picked = sample_detections(found.rows, n, strategy, seed, score="peak_score").sort_values(
        ["path", "start_s"], ignore_index=True)
    return write_review(out_dir, picked, "path", pad_s, _event_row, list(found.notes))


def _event_row(r) -> tuple[str, float, float, float, dict]:
    """An event's clip (named after its start, covering clip_span) and review row; the verdict goes
    to the peak window, a detection of the store."""
    return r.label, r.start_s, *clip_span(r), {
        "species": r.label, "site": r.site, "event_start_time": r.start_time, "event_start_s": r.start_s,
        "event_end_s": r.end_s, "event_windows": r.n_windows, "peak_start_s": r.peak_start_s,
        "peak_end_s": r.peak_end_s, "peak_score": round(float(r.peak_score), 4), "model_id": r.model_id,
        "recording_id": r.recording_id}


def make_review_from(store: Store, out_dir: Path, listing: Path, pad_s: float = 1.0) -> ReviewSet:
    """Cut a clip for every window of a listing (``pam similar --out``: species, site, recording,
    start_s, end_s, start_time, similarity, model_id, recording_id) and write ``review.csv``; each
    window is its own event, its similarity the row's ``peak_score``."""
    from pam.io.manifest import check_outside_dumps

    out_dir, listing = Path(out_dir), Path(listing)
    check_outside_dumps(store, out_dir, "review folder")
    if not listing.is_file():
        raise ReviewError(f"--from {listing}: file not found; write one with `pam similar ... --out {listing}`")
    table = pd.read_csv(listing, dtype={"recording": str, "site": str, "species": str}, keep_default_na=False)
    need = [c for c in ("species", "recording", "start_s", "end_s") if c not in table.columns]
    if need:
        raise ReviewError(f"--from {listing}: missing column(s) {need}; write it with `pam similar --out`")
    refuse_filled_review(out_dir)
    get = lambda col, default="": table[col] if col in table.columns else pd.Series([default] * len(table))  # noqa: E731
    table = table.assign(site=get("site"), start_time=get("start_time"), score=get("similarity", np.nan),
                         model_id=get("model_id"), recording_id=get("recording_id"))
    return write_review(out_dir, table, "recording", pad_s, _window_row, [])


def _window_row(r) -> tuple[str, float, float, float, dict]:
    """A listed window's clip and review row: the window is its own event, its similarity the score."""
    start_s, end_s = float(r.start_s), float(r.end_s)
    return r.species, start_s, start_s, end_s, {
        "species": r.species, "site": r.site, "event_start_time": r.start_time, "event_start_s": start_s,
        "event_end_s": end_s, "event_windows": 1, "peak_start_s": start_s, "peak_end_s": end_s,
        "peak_score": r.score, "model_id": r.model_id, "recording_id": r.recording_id}


def refuse_filled_review(out_dir: Path) -> None:
    """A review folder whose review.csv holds verdicts is never overwritten."""
    existing = out_dir / "review.csv"
    if existing.is_file():
        old = pd.read_csv(existing, dtype=str, keep_default_na=False)
        filled = int((old.get("verdict", pd.Series(dtype=str)).str.strip() != "").sum())
        if filled:
            raise ReviewError(f"{existing}: already holds {filled} verdict(s); import it (pam review-import) and "
                              "use another --out for the next round, so that no verdict is overwritten")


def write_review(out_dir: Path, picked: pd.DataFrame, path_column: str, pad_s: float, review_row,
                 notes: list[str]) -> ReviewSet:
    """Cut one clip per row of ``picked`` (each recording opened once; one that cannot be opened is
    skipped and named in the notes) and write ``review.csv``. ``review_row(row)`` gives the
    clip's label, the start its name carries, the span it covers and the row's other columns."""
    rows, missing = [], []
    for path, group in picked.groupby(path_column, sort=True):
        try:
            source = sf.SoundFile(str(path))
        except Exception:  # moved, deleted or unreadable since detection
            missing.append(str(path))
            continue
        with source:
            for r in group.itertuples(index=False):
                label, name_start_s, start_s, end_s, fields = review_row(r)
                name = f"{_safe(label)}/{_safe(fields['site'])}_{_safe(Path(path).stem)}_{name_start_s:09.3f}s.wav"
                clip_start_s, _ = cut_clip(source, start_s, end_s, pad_s, out_dir / "clips" / name)
                rows.append({"clip": f"clips/{name}", "verdict": "", "notes": "", "recording": str(path),
                             "clip_start_s": round(clip_start_s, 6), **fields})
    if missing:
        notes = notes + [f"{len(missing)} recording(s) could not be opened and were skipped, e.g. {missing[0]}"]
    table = pd.DataFrame(rows, columns=REVIEW_COLUMNS).sort_values(["species", "recording", "event_start_s"])
    table["event_start_time"] = iso_ms(pd.to_datetime(table["event_start_time"], utc=True))
    out_dir.mkdir(parents=True, exist_ok=True)
    csv = out_dir / "review.csv"
    table.to_csv(csv, index=False)
    return ReviewSet(csv, len(table), notes)


def read_review_csv(path: Path) -> pd.DataFrame:
    """The verdict rows of a filled-in review CSV (unreviewed rows dropped); ReviewError lists bad rows."""
    path = Path(path)
    if not path.is_file():
        raise ReviewError(f"{path}: review CSV not found")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = frame.rename(columns={old: new for old, new in OLD_REVIEW_NAMES.items() if new not in frame.columns})
    need = [c for c in ("recording", "peak_start_s", "peak_end_s", "species", "verdict") if c not in frame.columns]
    if need:
        raise ReviewError(f"{path}: missing column(s) {need}; a review CSV has {REVIEW_COLUMNS}")
    problems, keep = [], []
    for i, row in enumerate(frame.to_dict("records")):
        where = f"{path}: line {i + 2}"
        verdict = row["verdict"].strip().lower()
        if verdict == "":
            continue
        if verdict not in VERDICTS:
            problems.append(f"{where}: verdict {row['verdict']!r} is not true, false or unsure")
            continue
        try:
            start_s, end_s = float(row["peak_start_s"]), float(row["peak_end_s"])
        except ValueError:
            problems.append(f"{where}: peak_start_s/peak_end_s are not numbers ({row['peak_start_s']!r}, "
                            f"{row['peak_end_s']!r})")
            continue
        if not row["recording"].strip() or not row["species"].strip():
            problems.append(f"{where}: recording and species must not be empty")
            continue
        keep.append({**row, "verdict": VERDICTS[verdict], "peak_start_s": start_s, "peak_end_s": end_s})
    if problems:
        raise ReviewError("\n".join([f"{path}: {len(problems)} bad row(s)"] + problems))
    return pd.DataFrame(keep, columns=list(frame.columns))


def _text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def import_review(store: Store, csv: Path) -> tuple[pd.DataFrame, Path | None]:
    """Store a filled-in review CSV as verified labels; returns (rows, file written or None if no verdicts)."""
    store.location.require_local("pam review-import")
    rows = read_review_csv(csv)
    if rows.empty:
        return rows, None
    now = datetime.now(timezone.utc)
    get = lambda col: rows[col] if col in rows.columns else pd.Series([""] * len(rows))  # noqa: E731
    score = pd.to_numeric(get("peak_score"), errors="coerce")
    start_time = _peak_times(rows)
    data = {
        "recording_id": [_text(v) for v in get("recording_id")],
        "path": rows["recording"].str.strip().tolist(),
        "site": [_text(v) for v in get("site")],
        "start_s": rows["peak_start_s"].astype(float).tolist(),
        "end_s": rows["peak_end_s"].astype(float).tolist(),
        "start_time": [None if pd.isna(t) else t.to_pydatetime() for t in start_time],
        "label": rows["species"].str.strip().tolist(),
        "model_id": [_text(v) for v in get("model_id")],
        "score": [None if pd.isna(s) else float(s) for s in score],
        "verdict": rows["verdict"].tolist(),
        "notes": [_text(v) for v in get("notes")],
        "source": [str(Path(csv).resolve())] * len(rows),
        "imported_at": [now] * len(rows),
    }
    table = pa.table(data, schema=schemas.with_version("verified"))
    out = store.root / "labels" / f"verified-{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}.parquet"
    write_parquet_atomic(table, out)
    return table.to_pandas(), out


def _peak_times(rows: pd.DataFrame) -> pd.Series:
    """UTC start of each row's peak window: the event's start time plus the peak's offset in the
    event (``peak_start_time`` as such in review CSVs from before the columns were renamed)."""
    def times(col: str) -> pd.Series:  # ISO8601: older files mix rows with and without fractions
        values = rows[col] if col in rows.columns else pd.Series([""] * len(rows), index=rows.index)
        return pd.to_datetime(values.replace("", None), utc=True, errors="coerce", format="ISO8601")

    if "event_start_time" not in rows.columns or "event_start_s" not in rows.columns:
        return times("peak_start_time")
    offset = pd.to_numeric(rows["peak_start_s"], errors="coerce") - pd.to_numeric(rows["event_start_s"],
                                                                                  errors="coerce")
    return times("event_start_time") + pd.to_timedelta((offset * 1e6).round(), unit="us")


def training_labels(verified: pd.DataFrame) -> pd.DataFrame:
    """A clip table for ``pam.train``: one row per verified window, ``label`` ';'-joined or ``none``."""
    judged = verified[verified["verdict"].isin(["true", "false"])]
    rows = []
    for (path, start_s, end_s), group in judged.groupby(["path", "start_s", "end_s"], sort=True):
        present = sorted(set(group.loc[group["verdict"] == "true", "label"]))
        site = next((s for s in group["site"] if isinstance(s, str)), "")
        recording = next((r for r in group["recording_id"] if isinstance(r, str)), path)
        rows.append({"path": path, "start_s": start_s, "end_s": end_s,
                     "label": ";".join(present) if present else "none", "site": site, "recording": recording})
    return pd.DataFrame(rows, columns=["path", "start_s", "end_s", "label", "site", "recording"])


def write_training_labels(store: Store, out: Path | None = None) -> tuple[Path, int]:
    """Write the training clip table of every verdict so far (default ``STORE/labels/training_labels.csv``)."""
    table = training_labels(store.read_verified())
    out = Path(out) if out else store.root / "labels" / "training_labels.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return out, len(table)
