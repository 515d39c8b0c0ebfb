"""Detections out of the store, in the formats people check them in.

* ``raven``: one Raven Pro selection table per recording (``<stem>.Table.1.selections.txt``,
  tab-separated, the standard columns Selection, View, Channel, Begin Time (s), End Time (s),
  Low Freq (Hz), High Freq (Hz), plus Common Name, Species (the label as stored, which
  ``pam train`` reads back) and Score), under a folder per site. Open the recording in Raven,
  then File > Open Selection Table.
* ``audacity``: one label track per recording (``<stem>.labels.txt``: start, end, common name
  and score, tab-separated), for File > Import > Labels.
* ``csv``: every detection in one ``detections.csv``, with the site's local time beside UTC
  and the label's common and scientific names beside the label.

Common names come from ``Scientific_Common`` labels (``pam.store.species``); a label without
one (``bobwhite_covey``) is its own common name in Raven and Audacity.

Raven and Audacity get one box per event (``pam.analysis.events``: the overlapping windows of one call
joined, scored by their peak), CSV one row per detection window; ``events`` chooses either
way (CSV events go to ``events.csv``). Times are seconds into the recording file, which is
what both programs show. ``index.csv`` lists every table written and the recording it
belongs to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import soundfile as sf

from pam.analysis.csv_times import iso_ms, with_iso_times
from pam.config import PamConfig
from pam.store.analysis_config import stored_analysis_config
from pam.store.query import query_detections
from pam.store.species import species_name
from pam.store.store import Store

FORMATS = ("raven", "audacity", "csv")
RAVEN_COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                 "High Freq (Hz)", "Common Name", "Species", "Score"]


@dataclass
class ExportResult:
    folder: Path
    files: list[Path]
    detections: int  # rows or boxes written: events when ``events``, else detection windows
    notes: list[str] = field(default_factory=list)
    events: bool = False


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"


def _seconds(x: float) -> str:
    return f"{x:.6f}"


def _nyquist(store: Store, det: pd.DataFrame) -> dict[str, float]:
    """Half the sample rate per recording path: the manifest, else the file's header."""
    manifest = store.read_manifest()
    rates = dict(zip(manifest["path"], manifest["sample_rate"]))
    out = {}
    for path in det["path"].unique():
        rate = rates.get(path)
        if rate is None or pd.isna(rate):
            try:
                rate = sf.info(str(path)).samplerate
            except Exception:
                rate = None
        out[path] = float(rate) / 2 if rate else 0.0
    return out


def _table_names(det: pd.DataFrame) -> dict[str, str]:
    """A relative file stem per recording: ``<site>/<file stem>``, made unique if two collide."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for path, site, rid in det[["path", "site", "recording_id"]].drop_duplicates("path").itertuples(index=False):
        stem = f"{_safe(site)}/{_safe(Path(path).stem)}"
        if stem in taken:
            stem = f"{stem}-{str(rid)[:8]}"
        taken.add(stem)
        names[path] = stem
    return names


def write_raven(det: pd.DataFrame, out: Path, nyquist: dict[str, float], low_hz: float | None = None,
                high_hz: float | None = None) -> list[dict]:
    """One selection table per recording; returns index rows."""
    index = []
    for path, stem in _table_names(det).items():
        rows = det[det["path"] == path].sort_values(["start_s", "label"], kind="stable")
        high = high_hz if high_hz is not None else nyquist.get(path, 0.0)
        low = low_hz if low_hz is not None else 0.0
        lines = ["\t".join(RAVEN_COLUMNS)]
        for i, r in enumerate(rows.itertuples(index=False), start=1):
            lines.append("\t".join([str(i), "Spectrogram 1", "1", _seconds(r.start_s), _seconds(r.end_s),
                                    f"{low:.1f}", f"{high:.1f}", species_name(r.label).display, str(r.label),
                                    f"{float(r.score):.4f}"]))
        index.append(_write_table(out, f"{stem}.Table.1.selections.txt", lines, path, rows))
    return index


def write_audacity(det: pd.DataFrame, out: Path) -> list[dict]:
    """One Audacity label track per recording; returns index rows."""
    index = []
    for path, stem in _table_names(det).items():
        rows = det[det["path"] == path].sort_values(["start_s", "label"], kind="stable")
        lines = [f"{_seconds(r.start_s)}\t{_seconds(r.end_s)}\t{species_name(r.label).display} {float(r.score):.3f}"
                 for r in rows.itertuples(index=False)]
        index.append(_write_table(out, f"{stem}.labels.txt", lines, path, rows))
    return index


def _write_table(out: Path, name: str, lines: list[str], path: str, rows: pd.DataFrame) -> dict:
    """Write one recording's table under ``out``; its row of the export index."""
    file = out / name
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"table": str(file.relative_to(out)), "recording": path, "site": rows["site"].iloc[0],
            "selections": len(rows)}


def with_names(det: pd.DataFrame) -> pd.DataFrame:
    """Add ``common_name`` and ``scientific_name`` right after ``label`` (empty for labels without them)."""
    names = [species_name(label) for label in det["label"]]
    at = list(det.columns).index("label") + 1
    out = det.copy()
    out.insert(at, "common_name", [n.common for n in names])
    out.insert(at + 1, "scientific_name", [n.scientific for n in names])
    return out


def with_local_time(det: pd.DataFrame, config: PamConfig) -> pd.DataFrame:
    """Add ``local_time``: the window (or event) start on the site's clock, ISO with milliseconds and
    its UTC offset (``pam.analysis.csv_times``)."""
    local = pd.Series([""] * len(det), index=det.index, dtype=object)
    for site, idx in det.groupby("site").groups.items():
        times = pd.to_datetime(det.loc[idx, "start_time"], utc=True).dt.tz_convert(config.site_tz(site))
        local.loc[idx] = iso_ms(times).tolist()
    return det.assign(local_time=local)


def _remove_previous_export(out: Path) -> None:
    """Delete the tables an earlier export listed in ``out/index.csv`` (pam's own files only), so a
    re-export with other filters leaves no stale table beside the new ones."""
    index = out / "index.csv"
    if not index.is_file():
        return
    try:
        listed = pd.read_csv(index, dtype=str, keep_default_na=False).get("table", pd.Series(dtype=str))
    except (ValueError, OSError, pd.errors.ParserError):
        return
    root = out.resolve()
    for name in listed:
        path = (out / name).resolve()
        if name and root in path.parents and path.is_file():
            path.unlink()
    index.unlink()


def export_detections(store: Store, out: Path, fmt: str, config: PamConfig | None = None,
                      species: Sequence[str] | None = None, sites: Sequence[str] | None = None,
                      start: str | None = None, end: str | None = None, min_score: float | None = None,
                      model_id: str | None = None, merge_gap_s: float | None = None,
                      low_hz: float | None = None, high_hz: float | None = None,
                      events: bool | None = None) -> ExportResult:
    """Write the detections matching the filters in ``fmt`` (raven | audacity | csv) under ``out``.

    ``events`` (default: for raven and audacity, or when ``merge_gap_s`` is given) writes one
    row or box per event, windows up to ``merge_gap_s`` seconds apart joined too; ``min_score``
    then keeps the events whose peak reaches it. Otherwise one row per detection window.
    """
    from pam.analysis.events import query_events
    from pam.io.manifest import check_outside_dumps

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    check_outside_dumps(store, out, "export folder")
    if events is None:
        events = fmt != "csv" or merge_gap_s is not None
    filters = dict(species=species, sites=sites, start=start, end=end, min_score=min_score, model_id=model_id)
    found = (query_events(store, gap_s=merge_gap_s or 0.0, **filters) if events
             else query_detections(store, **filters))
    det = found.rows
    notes = list(found.notes)
    if model_id is None and len(det) and fmt != "csv":
        # a selection table has no model column: list each call once, from the species' counting model
        from pam.analysis.summaries import label_models, one_model_per_label

        shared = det.groupby("label")["model_id"].nunique()
        if (shared > 1).any():
            counting = label_models(det, store.read_runs(), store.done_table(columns=["recording_id", "model_id"]))
            det = one_model_per_label(det, counting).reset_index(drop=True)
            what = "events" if events else "detections"
            several = shared[shared > 1].index
            if len(several) > 3:  # a broad model's hundreds of species: one line, not one per species
                chosen = sorted({counting[label] for label in several})
                notes.append(f"{len(several)} species have {what} of several models; exported those of each "
                             f"species' latest run's model ({', '.join(chosen)}; --model chooses)")
            else:
                notes += [f"{label}: {what} of {shared[label]} models; exported those of model {counting[label]} "
                          "(the latest run's; --model chooses)" for label in several]
    out = Path(out)
    if fmt == "csv":
        # --out names the CSV file itself when it ends in .csv, else the folder to hold detections.csv
        # (events.csv with events)
        path = out if out.suffix.lower() == ".csv" else out / ("events.csv" if events else "detections.csv")
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = with_local_time(with_names(det), config or stored_analysis_config(store) or PamConfig())
        with_iso_times(frame).to_csv(path, index=False)
        return ExportResult(path.parent, [path], len(det), notes, events)
    out.mkdir(parents=True, exist_ok=True)
    _remove_previous_export(out)
    boxes = det.rename(columns={"peak_score": "score"}) if events else det
    if fmt == "raven":
        nyquist = _nyquist(store, boxes)
        unknown = [p for p, hz in nyquist.items() if hz == 0.0]
        if unknown and high_hz is None:
            notes.append(f"{len(unknown)} recording(s) have no known sample rate; their High Freq is 0 "
                         "(pass --high-freq)")
        index = write_raven(boxes, out, nyquist, low_hz, high_hz)
    else:
        index = write_audacity(boxes, out)
    pd.DataFrame(index, columns=["table", "recording", "site", "selections"]).to_csv(out / "index.csv", index=False)
    return ExportResult(out, [out / row["table"] for row in index], int(np.sum([r["selections"] for r in index])),
                        notes, events)
