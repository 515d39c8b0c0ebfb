"""Events: the calls behind overlapping detection windows.

Windows overlap (3 s every 1.5 s by default), so one call is several detection rows: seven
calls can be thirteen detections. An *event* joins them back into one call: a maximal run
of detection windows of one label, found by one model in one recording, in which each
window starts at or before the end of the run so far (windows that only touch, hop equal to
the window, join too). With a hop longer than the window no two windows touch and every
window is its own event. Windows of different labels, models or recordings never join, so an
event never crosses the end of a file. This is the merge BirdNET-Analyzer applies to its
consecutive detections.

Events are computed on read, from the detections that match a query; nothing about them is
stored. An event has its first window's start and the latest window end, the highest window
score (``peak_score``) and which window that was (``peak_start_s``, ``peak_end_s``: the
detection a review verdict is stored against), and how many windows it joins (``n_windows``).

``detection_events`` is the pure merge (vectorised: a sort, a grouped running maximum and a few
array reductions, no Python loop per row); ``query_events`` reads the store through
``pam.store.query`` and merges what it finds.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pam.store.query import QueryResult, query_detections, score_threshold
from pam.store.store import Store

# Windows of one (recording, path, model, label) can join. ``path`` guards identical copies of
# a file (they share a recording_id) from being read as one recording.
EVENT_KEYS = ["recording_id", "path", "model_id", "label"]
# Columns of an event, in order; those describing the recording are kept only when the
# detections had them.
CONTEXT_COLUMNS = ["recording_id", "site", "path", "device", "model_id", "settings_hash", "label"]
EVENT_COLUMNS = CONTEXT_COLUMNS + ["start_s", "end_s", "start_time", "end_time", "peak_score", "peak_start_s",
                                   "peak_end_s", "n_windows"]
# pam writes start_s and end_s as sample counts over the file's rate, so touching windows
# compare equal; the tolerance absorbs float rounding of other writers' seconds.
TOUCH_TOLERANCE_S = 1e-6


def detection_events(det: pd.DataFrame, gap_s: float = 0.0) -> pd.DataFrame:
    """One row per event: maximal runs of touching or overlapping windows of one label, model and recording.

    ``det`` has the columns of the detections table (``label``, ``start_s``, ``end_s``,
    ``score`` and ``recording_id`` or ``path`` at least). ``gap_s`` also joins windows up to
    that many seconds apart (0: only windows that touch or overlap). Events come sorted by
    start time, site, path, start and label, like ``pam query``'s detections.
    """
    need = [c for c in ("label", "start_s", "end_s", "score") if c not in det.columns]
    keys = [c for c in EVENT_KEYS if c in det.columns]
    if need or not {"recording_id", "path"} & set(keys):
        missing = need + ([] if {"recording_id", "path"} & set(keys) else ["recording_id or path"])
        raise ValueError(f"detections to merge into events lack column(s) {', '.join(missing)}")
    if gap_s < 0:
        raise ValueError(f"gap_s must be 0 or more seconds, got {gap_s}")
    if det.empty:
        return _empty_events(det)
    group = det.groupby(keys, sort=True, dropna=False).ngroup().to_numpy()
    order = np.lexsort((det["start_s"].to_numpy(dtype=np.float64), group))
    group = group[order]
    start_s = det["start_s"].to_numpy(dtype=np.float64)[order]
    end_s = det["end_s"].to_numpy(dtype=np.float64)[order]
    score = det["score"].to_numpy()[order]

    # a window opens a new event when it is the first of its group, or starts after every
    # earlier window of its group has ended (a grouped running maximum of the ends)
    new_event = np.ones(len(order), dtype=bool)
    new_event[1:] = group[1:] != group[:-1]
    reach = pd.Series(end_s).groupby(group, sort=False).cummax().to_numpy()
    new_event[1:] |= start_s[1:] > reach[:-1] + gap_s + TOUCH_TOLERANCE_S
    first = np.flatnonzero(new_event)
    n_windows = np.diff(np.append(first, len(order)))
    # the peak window: the first (earliest) window of its event holding the event's highest score
    ranked = np.where(np.isnan(score), -np.inf, score)
    top = np.repeat(np.maximum.reduceat(ranked, first), n_windows)
    at_top = np.flatnonzero(ranked == top)
    event_of = np.repeat(np.arange(len(first)), n_windows)[at_top]
    peak = at_top[np.r_[True, event_of[1:] != event_of[:-1]]]

    context = [c for c in CONTEXT_COLUMNS if c in det.columns]
    out = det.iloc[order[first]][context + ["start_time"] * ("start_time" in det.columns)].reset_index(drop=True)
    out.insert(len(context), "start_s", start_s[first])
    out.insert(len(context) + 1, "end_s", np.maximum.reduceat(end_s, first))
    if "start_time" in det.columns:
        length_us = np.round((out["end_s"] - out["start_s"]).to_numpy() * 1e6).astype(np.int64)
        out["end_time"] = out["start_time"] + pd.to_timedelta(length_us, unit="us")
    out["peak_score"] = score[peak]
    out["peak_start_s"] = start_s[peak]
    out["peak_end_s"] = end_s[peak]
    out["n_windows"] = n_windows.astype(np.int64)
    return _sorted(out)


def _sorted(events: pd.DataFrame) -> pd.DataFrame:
    """Events by start time (unknown last), site, path, start and label, as ``pam query`` sorts detections."""
    keys = [c for c in ("start_time", "site", "path", "start_s", "label") if c in events.columns]
    table = pa.Table.from_pandas(events[keys], preserve_index=False)
    order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in keys])  # nulls last
    return events.take(order.to_numpy()).reset_index(drop=True)


def _empty_events(det: pd.DataFrame) -> pd.DataFrame:
    """No detections: no events, with the columns and types events have."""
    out = det[[c for c in CONTEXT_COLUMNS if c in det.columns]].head(0).reset_index(drop=True)
    for col in ("start_s", "end_s"):
        out[col] = pd.Series(dtype="float64")
    if "start_time" in det.columns:
        out["start_time"] = det["start_time"].head(0).reset_index(drop=True)
        out["end_time"] = out["start_time"]
    out["peak_score"] = pd.Series(dtype=det["score"].dtype)
    out["peak_start_s"] = pd.Series(dtype="float64")
    out["peak_end_s"] = pd.Series(dtype="float64")
    out["n_windows"] = pd.Series(dtype="int64")
    return out


def query_events(store: Store, species: str | Sequence[str] | None = None,
                 sites: str | Sequence[str] | None = None, start: str | date | datetime | None = None,
                 end: str | date | datetime | None = None, min_score: float | None = None,
                 model_id: str | None = None, limit: int | None = None, gap_s: float = 0.0) -> QueryResult:
    """Events of the detections matching the filters, by time; ``rows`` are events, ``windows`` their detections.

    Events are built from every detection window matching species, sites, times and model;
    ``min_score`` then keeps the events whose peak reaches it (so a call keeps its whole
    extent even where its weaker windows score below), and ``limit`` the earliest events.
    ``start``/``end`` select windows by their start time, so an event running across
    ``end`` ends at the last window starting before it.
    """
    found = query_detections(store, species=species, sites=sites, start=start, end=end, model_id=model_id)
    events = detection_events(found.rows, gap_s)
    notes = list(found.notes)
    if min_score is not None:
        events = events[events["peak_score"] >= score_threshold(min_score).as_py()].reset_index(drop=True)
        if events.empty and not found.rows.empty:
            notes.append(f"no event peaks at --min-score {min_score} or above")
    total, windows = len(events), int(events["n_windows"].sum())
    if limit is not None:
        events = events.head(max(0, limit))
    return QueryResult(events, found.files, notes, total, windows)
