"""Apply a head (``pam.train.heads``) to the archive from the stored embeddings: ``pam apply-head``.

The head's detections are a model of their own (model id = head id), written through the
same commit as ``pam detect`` (``Store.commit``: detections and done rows, one Delta
transaction per group of recordings) with the same rerun rules. The work key is (recording
id, head id, settings hash), where the settings hash covers the head's thresholds and the
settings its embeddings were computed under: a recording embedded again under other
settings is work again, and its old head rows are replaced in the same commit. No audio
file is opened: times, paths and window ends come from the store.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

import pam.store.schemas as schemas
from pam import __version__
from pam.config import settings_hash
from pam.store.embeddings import ROWS, ReadAhead, embedding_files, read_ahead, score_embedding_file
from pam.store.results import UNKNOWN, ResultFile
from pam.store.runs import window_lengths
from pam.store.store import Flush, Store, new_run_id
from pam.store.transactions import DoneFiles
from pam.train.head_registry import resolve_head
from pam.train.heads import Head, HeadError

# windows scored and committed together (their vectors are read and scored file by file)
WINDOWS_PER_COMMIT = 1_000_000
# windows of files read and scored ahead of the commits (their rows and scores held meanwhile)
AHEAD_WINDOWS = 200_000


@dataclass
class ApplyReport:
    head_id: str
    run_id: str | None
    recordings_total: int = 0
    recordings_done: int = 0
    recordings_skipped: int = 0
    windows: int = 0
    detections: int = 0
    wall_s: float = 0.0
    commits: list[int] = field(default_factory=list)

    @property
    def windows_per_s(self) -> float:
        return self.windows / self.wall_s if self.wall_s else 0.0


def head_settings_key(head: Head, source_settings: str) -> str:
    """The settings hash of a head's detections of a recording embedded under ``source_settings``."""
    return settings_hash({"head": head.head_id, "thresholds": head.card.thresholds, "embeddings": source_settings,
                          "schema": schemas.DETECTIONS_VERSION})


def plan(store: Store, head: Head, force: bool = False, snap=None,
         done_files: DoneFiles | None = None) -> tuple[pd.DataFrame, int]:
    """The recordings whose embeddings the head still has to score (their source done rows with
    the head's settings hash as ``key``), and how many are done already, in one snapshot
    (``snap``, default the latest). The head's own done rows are read through ``done_files``
    (a ``DoneFiles`` the commits then reuse)."""
    model_id = head.card.embedding_model_id
    snap = store.snapshot() if snap is None else snap
    done_files = DoneFiles() if done_files is None else done_files
    both = done_files.rows(store.results, snap, [model_id, head.head_id])  # one read of the done files for both
    source = both.loc[both["model_id"] == model_id, ["recording_id", "settings_hash", "site", "path", "windows",
                                                     "audio_s"]].reset_index(drop=True)
    if source.empty:
        raise HeadError(f"store {store.uri} has no windows of model {model_id} (the model head {head.head_id} reads); "
                        f"run `pam detect` with that model and detect.embeddings: true first")
    keys = {k: head_settings_key(head, k) for k in set(source["settings_hash"])}  # the head id is a hash: not per row
    source["key"] = source["settings_hash"].map(keys)
    done = both.loc[both["model_id"] == head.head_id]
    have = set(zip(done["recording_id"], done["settings_hash"]))
    todo = source if force else source[[(r, k) not in have for r, k in zip(source["recording_id"], source["key"])]]
    return todo.reset_index(drop=True), len(source) - len(todo)


def apply_head(store: Store | str | Path, head_path: Head | str | Path, force: bool = False,
               windows_per_commit: int = WINDOWS_PER_COMMIT, threads: int | None = None) -> ApplyReport:
    """Score every stored window of the head's embedding model not yet scored by this head,
    and commit the head's detections and done rows. A second call adds nothing.

    ``head_path``: a head file, the id of a head registered in the store
    (``pam.train.head_registry``), or a Head. ``threads``: files read and scored at a time
    (default: one per core).

    One snapshot of the results table is opened (one log replay) for the plan and the reads;
    each commit brings it up to date (only the log's new entries) and is built on it, so a
    writer that committed meanwhile is still seen, and never doubled; its check of the done
    rows reads only the done files it has not read before (``DoneFiles``). The files are read and
    scored by ``threads`` threads, the head run on each page of vectors where it lies in the
    file (``pam.store.embeddings.score_embedding_file``), while this thread builds and commits
    the detections of the files scored before."""
    store = store if isinstance(store, Store) else Store(store)
    head = resolve_head(store, head_path)
    t0 = time.perf_counter()
    model_id = head.card.embedding_model_id
    snap = store.snapshot()
    done_files = DoneFiles()
    # the manifest and the runs table are read while the plan reads done rows; the runs (the
    # window lengths, only needed to build the first commit) go on while the files are read
    side = ThreadPoolExecutor(1)
    manifest_read = side.submit(store.read_manifest)
    lengths_read = side.submit(window_lengths, store, model_id)
    side.shutdown(wait=False)
    todo, skipped = plan(store, head, force, snap, done_files)
    report = ApplyReport(head.head_id, None, recordings_total=len(todo) + skipped, recordings_skipped=skipped)
    if todo.empty:  # nothing to do: no waiting for those reads
        report.wall_s = time.perf_counter() - t0
        return report
    manifest = manifest_read.result()
    manifest = manifest[["recording_id", "device", "start_time", "duration_s"]].drop_duplicates("recording_id")
    todo = todo.merge(manifest, on="recording_id", how="left")
    # by site and time: a commit's recordings then lie in few (site, month) files, read once
    todo = todo.sort_values(["site", "start_time", "recording_id"], na_position="first", kind="stable")
    report.run_id = run_id = new_run_id()
    classes = len(head.card.classes)
    started = datetime.now(timezone.utc)
    thresholds = np.array([head.card.thresholds[c] for c in head.card.classes], dtype=np.float32)
    labels = pa.array(list(head.card.classes), pa.string())
    chunks = list(_chunks(todo, windows_per_commit))
    reading = _read_files(store, head, chunks, snap, max(1, threads or os.cpu_count() or 1))  # starts them
    try:
        lengths = lengths_read.result()
        missing = set(todo["settings_hash"]) - set(lengths)
        if missing:  # before any commit
            raise HeadError(f"store {store.uri}: no run row says the window length of model {model_id} under "
                            f"settings {sorted(missing)[:3]}; the runs/ table is incomplete (rerun `pam detect` on "
                            "those dumps)")
        for seq, (chunk, (rows, calls)) in enumerate(zip(chunks, _scored_chunks(reading, chunks, classes))):
            flush, windows = _flush(head, chunk, rows, calls, thresholds, labels, lengths, run_id)
            committed = store.commit(run_id, seq, flush, replace=force, snap=snap, done_files=done_files)
            report.commits.append(committed.done.num_rows)
            report.recordings_done += committed.done.num_rows
            report.windows += windows
            report.detections += int(pc.sum(committed.done.column("detections")).as_py() or 0)
    finally:
        reading.results.close()  # a failure stops the reading threads before it propagates
    report.wall_s = time.perf_counter() - t0
    store.write_run({
        "run_id": run_id, "flow": "apply-head", "status": "completed", "started_at": started,
        "finished_at": datetime.now(timezone.utc), "model_id": head.head_id,
        "settings_hash": ";".join(sorted(set(todo["key"]))),
        "config_json": json.dumps({"head": head.head_id if isinstance(head_path, Head) else str(head_path),
                                   "head_id": head.head_id, "embedding_model_id": model_id,
                                   "thresholds": head.card.thresholds}),
        "recordings_total": report.recordings_total, "recordings_done": report.recordings_done,
        "recordings_skipped": report.recordings_skipped, "recordings_failed": 0, "detections": report.detections,
        "audio_s": float(todo["audio_s"].sum()), "wall_s": report.wall_s, "failures_json": "[]",
        "pam_version": __version__, "host": os.uname().nodename, "device": "cpu",
    })
    return report


def _chunks(todo: pd.DataFrame, windows: int):
    """Runs of whole recordings of about ``windows`` windows each, in ``todo``'s order (by site
    and time: one commit may hold several small sites, and a big site takes several commits)."""
    counts = todo["windows"].fillna(0).to_numpy()
    bucket = (np.cumsum(counts) - counts) // max(1, windows)  # by the windows before each recording
    for _b, chunk in todo.groupby(bucket, sort=True):
        yield chunk


def files_by_site(files: list[ResultFile]) -> dict[str, list[ResultFile]]:
    """``files`` by site partition (``unknown`` for none)."""
    out: dict[str, list[ResultFile]] = {}
    for f in files:
        out.setdefault(f.site or UNKNOWN, []).append(f)
    return out


def chunk_files(by_site: dict[str, list[ResultFile]], chunk: pd.DataFrame) -> list[ResultFile]:
    """The embedding files (``files_by_site``) that can hold windows of ``chunk``'s recordings:
    those of their sites whose dates (from the log) meet the UTC days the recordings span, and
    the files of unknown date (windows of recordings without a start time). A site with a
    recording of unknown length keeps all its files."""
    out = []
    for site, group in chunk.groupby(chunk["site"].fillna(UNKNOWN), sort=True):
        of_site = by_site.get(site, [])
        timed = group.dropna(subset=["start_time"])
        if timed["duration_s"].isna().any():
            out += of_site
            continue
        if timed.empty:
            out += [f for f in of_site if f.days() is None]
            continue
        starts = pd.to_datetime(timed["start_time"], utc=True)
        first = starts.min().date().isoformat()
        last = (starts + pd.to_timedelta(timed["duration_s"], unit="s")).max().date().isoformat()
        out += [f for f in of_site if (days := f.days()) is None or (days[0] <= last and days[1] >= first)]
    return out


@dataclass
class _Reading:
    """The files of every chunk, being read and scored (``ReadAhead`` of ``tasks``)."""

    by_site: dict[str, list[ResultFile]]  # every live embedding file, by site
    files_of: list[list[ResultFile]]  # per chunk, the files it reads
    read: Callable  # task (chunk index, file) -> (rows, scores) or None
    results: ReadAhead  # over the tasks, in order


def _read_files(store: Store, head: Head, chunks: list[pd.DataFrame], snap, threads: int) -> _Reading:
    """Start reading the files of every chunk (only those that can hold its windows:
    ``chunk_files``): ``threads`` threads, each reading a file and scoring its pages where they
    lie, some files ahead of the caller, so the threads keep working while the caller commits
    a chunk. Each file's windows are kept where they are live (embedded under the settings
    their recording's source done row names)."""
    model_id = head.card.embedding_model_id
    by_site = files_by_site(embedding_files(store, snap=snap))  # the log's file list once, not per chunk
    files_of = [chunk_files(by_site, chunk) for chunk in chunks]
    ids = [pa.array(chunk["recording_id"].tolist(), pa.string()) for chunk in chunks]
    live = [pa.array(chunk["settings_hash"].tolist(), pa.string()) for chunk in chunks]
    tasks = [(i, f) for i, of_chunk in enumerate(files_of) for f in of_chunk]

    def score(v: np.ndarray) -> np.ndarray:
        return head.scores(v, model_id, threads=1)  # one core per reading thread

    def read(task) -> tuple[pa.Table, np.ndarray] | None:
        i, f = task
        part = score_embedding_file(store, f, score, model_id, ids[i])
        if part is None:
            return None
        wanted = live[i].take(pc.index_in(part.rows.column("recording_id"), ids[i]))
        keep = pc.fill_null(pc.equal(part.rows.column("settings_hash"), wanted), False).to_numpy(zero_copy_only=False)
        if keep.all():
            return part.rows, part.results
        return (part.rows.filter(pa.array(keep)), part.results[keep]) if keep.any() else None

    # ahead: enough files to keep the threads busy while a commit is built (about AHEAD_WINDOWS
    # windows: only rows and scores are held, a few MB), but never fewer than two per thread
    rows_per_file = int(np.median([f.rows for _i, f in tasks])) if tasks else 1
    ahead = min(64, max(2 * threads + 2, AHEAD_WINDOWS // max(1, rows_per_file)))
    return _Reading(by_site, files_of, read, read_ahead(read, tasks, threads, ahead))


def _scored_chunks(reading: _Reading, chunks: list[pd.DataFrame], classes: int):
    """Per chunk, in order: its live windows and the head's scores of them [windows, classes]."""
    for i, of_chunk in enumerate(reading.files_of):
        parts = [part for _ in of_chunk if (part := next(reading.results)[1]) is not None]
        parts += [part for f in _unread_files(reading.by_site, of_chunk, chunks[i], parts)
                  if (part := reading.read((i, f))) is not None]
        if not parts:
            yield ROWS.empty_table(), np.zeros((0, classes), np.float32)
        else:
            yield pa.concat_tables([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _unread_files(by_site: dict[str, list[ResultFile]], read: list[ResultFile], chunk: pd.DataFrame,
                  parts) -> list[ResultFile]:
    """The other files of the sites of the chunk's recordings that came out with fewer windows
    than their source done rows count (their windows lie outside the days the manifest gives
    them, as after a clock change not yet re-analysed): they are read too, so that no window
    is left out because of the date pruning."""
    got = window_counts([rows for rows, _scores in parts])
    short = chunk[[got.get(r, 0) < n for r, n in zip(chunk["recording_id"], chunk["windows"].fillna(0))]]
    seen = {f.path for f in read}
    return [f for site in sorted(set(short["site"].fillna(UNKNOWN))) for f in by_site.get(site, [])
            if f.path not in seen]


def window_counts(tables: list[pa.Table]) -> dict[str, int]:
    """Windows per recording id in ``tables``' rows, counted in arrow (no Python string per window)."""
    got: dict[str, int] = {}
    for rows in tables:
        counts = pc.value_counts(rows.column("recording_id"))
        for r, n in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()):
            got[r] = got.get(r, 0) + n
    return got


def _flush(head: Head, chunk: pd.DataFrame, rows: pa.Table, calls: np.ndarray, thresholds: np.ndarray,
           labels: pa.Array, lengths: dict[str, float], run_id: str) -> tuple[Flush, int]:
    """The head's detection and done rows of the recordings of ``chunk``, from their scored windows."""
    head_id = head.head_id  # a hash of the card: once, not per row
    n = rows.num_rows
    win, cls = np.nonzero(calls >= thresholds)
    info = chunk.set_index("recording_id")
    rec = rows.column("recording_id").take(pa.array(win, pa.int64()))
    rec_ids = rec.to_numpy(zero_copy_only=False)
    start_s = rows.column("start_s").to_numpy()[win]
    length = np.array([lengths[k] for k in info.loc[rec_ids, "settings_hash"]], dtype=np.float64) if len(win) else \
        np.zeros(0)
    duration = info.loc[rec_ids, "duration_s"].to_numpy(dtype=np.float64) if len(win) else np.zeros(0)
    end_s = np.where(np.isnan(duration), start_s + length, np.minimum(start_s + length, duration))
    keys = info.loc[rec_ids, "key"].to_numpy() if len(win) else np.zeros(0, object)
    detections = pa.table({
        "recording_id": rec, "path": pa.array(info.loc[rec_ids, "path"].to_numpy() if len(win) else [], pa.string()),
        "device": pa.array(info.loc[rec_ids, "device"].to_numpy() if len(win) else [], pa.string(), from_pandas=True),
        "start_sample": rows.column("start_sample").take(pa.array(win, pa.int64())),
        "start_s": start_s, "end_s": end_s,
        "start_time": rows.column("start_time").take(pa.array(win, pa.int64())),
        "label": labels.take(pa.array(cls, pa.int64())), "score": calls[win, cls].astype(np.float32),
        "model_id": pa.array(np.full(len(win), head_id, dtype=object), pa.string()),
        "settings_hash": pa.array(keys, pa.string()),
        "run_id": pa.array(np.full(len(win), run_id, dtype=object), pa.string()),
        "site": rows.column("site").take(pa.array(win, pa.int64())),
        "date": rows.column("date").take(pa.array(win, pa.int64())),
    }, schema=pa.schema(list(schemas.DETECTIONS) + list(schemas.DETECTION_PARTITIONS)))
    counts = pd.Series(rec_ids).value_counts() if len(win) else pd.Series(dtype=int)
    windows_of = window_counts([rows])
    now = datetime.now(timezone.utc)
    done = pa.Table.from_pylist([{
        "recording_id": r.recording_id, "model_id": head_id, "settings_hash": r.key, "run_id": run_id,
        "site": r.site if isinstance(r.site, str) else None, "path": r.path,
        "windows": int(windows_of.get(r.recording_id, 0)), "audio_s": float(r.audio_s),
        "detections": int(counts.get(r.recording_id, 0)), "committed_at": now,
    } for r in chunk.itertuples(index=False)], schema=schemas.DONE)
    return Flush(detections, done), n
