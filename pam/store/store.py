"""The store: Parquet tables, the single source of truth (docs/store.md).

Layout::

    STORE/
      manifest/manifest.parquet            one row per recording path seen
      results/                             Delta Lake table: detections and done rows
        _delta_log/                        the table's versions
        kind=detection/site=S/month=YYYY-MM/part-<run>-<seq>-<hex>.parquet
        kind=done/site=S/done-<run>-<seq>-<hex>.parquet
      runs/run-<run>.parquet               one row per run
      models/model-<id>.parquet            model registry rows
      summaries/<name>/...                 derived tables
      .lock, .run.lock                     manifest lock; one run at a time (policy only)

A commit of a flush (its detections, its done rows, the rows it replaces) is one Delta
transaction (``pam.store.transactions``): readers see all of it or none of it, two writers
never both commit one recording, and a process killed at any point leaves files that no
version names, which ``recover`` deletes.
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import date, datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator
from urllib.parse import unquote

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

import pam.store.schemas as schemas
from pam.store.atomic import write_parquet_atomic  # noqa: F401 - write_parquet_atomic: imported from here by others
from pam.store.compaction import Compacted, compact, history, vacuum
from pam.store.location import StoreLocation
from pam.store.recovery import ORPHAN_AGE_S, recover, unnamed_files
from pam.store.results import (DETECTION, DONE, UNKNOWN, OldLayoutError, ResultFile,  # noqa: F401 - UNKNOWN,
                               ResultsTable)  # OldLayoutError: imported from here by others
from pam.store.transactions import (DONE_NAME, PART_NAME, Committed, DoneFiles, Flush,  # noqa: F401 - the names: imported
                                    commit_flush, committed_flushes, done_rows, retire_recordings)  # from here


# What a store folder holds once pam has written to it ("detections" and "done": the folder layout
# before the results table; "models", "heads", "labels": training and review may come first).
# A folder with none of these is not a store.
STORE_ENTRIES = ("results", "runs", "manifest", "summaries", "reports", "models", "heads", "index", "labels",
                 "config", "detections", "done")


class StoreBusy(RuntimeError):
    """Another process holds the store lock for longer than we were willing to wait."""


# Run locks held by this process: store root -> [fd, depth]. POSIX record locks belong to
# the process (not inherited by forked DataLoader workers, released by the kernel when the
# process dies, honoured over NFS), but closing any descriptor of the file drops them, so
# the file is opened once per process and nested holders only count.
_RUN_LOCKS: dict[Path, list[int]] = {}
_RUN_LOCKS_GUARD = threading.Lock()
# Summary tables that pam.analysis.summaries writes under summaries/<name>/<name>.parquet.
SUMMARY_TABLES = ("effort", "hourly_counts", "daily_counts", "site_days", "site_richness", "diel",
                  "occupancy", "precision")


def new_run_id() -> str:
    """Sortable, unique: UTC time plus random hex, e.g. ``20240501T020000Z-3fa9c2``."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


class Store:
    """One store: a folder, or an object-store URI such as ``s3://bucket/pam`` (``remote``; see
    docs/store.md#object-storage for what works there). Cheap to construct; nothing is read until asked."""

    def __init__(self, root: str | Path):
        self.location = StoreLocation(root)
        self.uri = self.location.uri  # the folder's absolute path, or the object-store URI
        self.remote = self.location.remote
        # a local folder as a Path; on object storage, the bucket/prefix path its file system uses
        self.root = PurePosixPath(self.location.base) if self.remote else Path(self.location.base)
        self._pinned = None  # set by at(): every read sees this version of the results table

    def at(self, as_of: int | str | datetime) -> "Store":
        """This store as it was at a version number or a time (``pam query --as-of``): every
        read of the returned store sees that one version of the results table; it cannot commit.
        Raises ValueError naming the versions there are when there is no such version."""
        pinned = Store(self.uri)
        pinned._pinned = self.results.snapshot_as_of(as_of)
        return pinned

    @property
    def pinned_version(self) -> int | None:
        """The version of the results table every read sees (``Store.at``), or None: the latest."""
        return self._pinned.version() if self._pinned is not None else None

    # -- layout -----------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest" / "manifest.parquet"

    @property
    def results_dir(self) -> Path:
        """The Delta table of detections and done rows (pam.store.results)."""
        return self.root / "results"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def summaries_dir(self) -> Path:
        return self.root / "summaries"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def holds_pam_entries(self) -> bool:
        """Whether a local store folder holds anything pam writes (its results table, runs,
        manifest, or the folders of the layout before the results table); an object store: True."""
        if self.remote:
            return True
        return any((self.root / name).exists() for name in STORE_ENTRIES)

    def _check_layout(self) -> None:
        if self.remote:  # stores of the folder layout were never written to object storage
            return
        if (self.root / "done").is_dir() and not (self.results_dir / "_delta_log").is_dir():
            raise OldLayoutError(f"store {self.root} has the folder layout of pam before its results table; convert "
                                 f"it with `pam store migrate {self.root} NEW_FOLDER` (the old store is only read)")

    def ensure(self) -> "Store":
        if self.remote:
            if self.results.snapshot() is None:
                self.results.ensure()
            return self
        self._check_layout()
        for d in (self.root, self.runs_dir):
            d.mkdir(parents=True, exist_ok=True)
        if not (self.results_dir / "_delta_log").is_dir():
            self.results.ensure()
        return self

    # -- locking ----------------------------------------------------------------------
    @contextmanager
    def lock(self, timeout_s: float = 600.0, what: str = "commit") -> Iterator[None]:
        """Exclusive lock on the store; waits up to ``timeout_s`` then raises StoreBusy. On object
        storage there is no lock (docs/store.md#object-storage)."""
        self.ensure()
        if self.remote:
            yield
            return
        path = self.root / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                        raise StoreBusy(
                            f"store {self.root} is locked by another pam process ({holder or 'unknown'}); "
                            f"gave up after {timeout_s:.0f} s"
                        ) from None
                    time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}: {what}".encode(), 0)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextmanager
    def run_lock(self, timeout_s: float = 0.0, what: str = "run") -> Iterator[None]:
        """One run at a time per store (``.run.lock``); the loser waits ``timeout_s`` then
        raises StoreBusy naming the holder. Re-entrant within a process (flow -> stages). On
        object storage it is not held: runs there are not kept apart (commits stay exactly-once)."""
        self.ensure()
        if self.remote:
            yield
            return
        with _RUN_LOCKS_GUARD:
            held = _RUN_LOCKS.get(self.root)
            if held is not None:
                held[1] += 1
        if held is None:
            fd = self._acquire_run_lock(timeout_s, what)
            with _RUN_LOCKS_GUARD:
                _RUN_LOCKS[self.root] = held = [fd, 1]
        try:
            yield
        finally:
            with _RUN_LOCKS_GUARD:
                held[1] -= 1
                release = held[1] == 0
                if release:
                    del _RUN_LOCKS[self.root]
            if release:
                fcntl.lockf(held[0], fcntl.LOCK_UN)
                os.close(held[0])

    def _acquire_run_lock(self, timeout_s: float, what: str) -> int:
        fd = os.open(self.root / ".run.lock", os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 300, 0).decode(errors="replace").strip()
                    os.close(fd)
                    raise StoreBusy(
                        f"store {self.root} is busy with another pam run ({holder or 'holder unknown'}); "
                        f"waited {timeout_s:.0f} s (runner.wait_s). This run stops; the next one picks up what is left"
                    ) from None
                time.sleep(0.1)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}: {what}, since {stamp}".encode(), 0)
        return fd

    def run_lock_holder_alive(self) -> bool:
        """Whether some process holds ``.run.lock`` now, asked of the kernel with a non-blocking
        lock test (the pid written in the file outlives the lock; issue 12, defect 4)."""
        if self.holds_run_lock():
            return True
        if self.remote:  # no run lock there
            return False
        try:
            fd = os.open(self.root / ".run.lock", os.O_RDWR)
        except OSError:
            return False
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        else:
            fcntl.lockf(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def holds_run_lock(self) -> bool:
        """Whether this process holds this store's run lock."""
        with _RUN_LOCKS_GUARD:
            return self.root in _RUN_LOCKS

    # -- manifest ---------------------------------------------------------------------
    def read_manifest(self) -> pd.DataFrame:
        if not self.location.exists("manifest/manifest.parquet"):
            return schemas.MANIFEST.empty_table().to_pandas()
        return self.location.read_parquet("manifest/manifest.parquet", schemas.MANIFEST).to_pandas()

    def write_manifest(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, schema=schemas.with_version("manifest"), preserve_index=False)
        self.location.write_parquet(table, "manifest/manifest.parquet")

    # -- the results table: detections and done ------------------------------------------
    @property
    def results(self) -> ResultsTable:
        return ResultsTable(self.location.uri_of("results"))

    def snapshot(self, as_of: int | str | datetime | None = None):
        """The results table at its latest version, or ``as_of`` a version number or time (None:
        nothing committed yet). Pass it to the readers below to read one consistent state.
        On a store from ``at()`` the default is the pinned version."""
        if as_of is None and self._pinned is not None:
            return self._pinned
        snap = self.results.snapshot(as_of)
        if snap is None:
            self._check_layout()
        return snap

    def _writable(self) -> None:
        if self._pinned is not None:
            raise ValueError(f"store {self.root} is opened at version {self._pinned.version()} (Store.at); "
                             "open it with Store(path) to write")

    def _done_rows(self, flt: ds.Expression | None, columns: list[str] | None, snap=None,
                   models: list[str] | None = None) -> pd.DataFrame:
        return done_rows(self.results, self.snapshot() if snap is None else snap, flt, columns, models)

    def done_table(self, model_id: str | None = None, settings_hash: str | None = None,
                   recording_ids: Iterable[str] | None = None, columns: list[str] | None = None,
                   snap=None) -> pd.DataFrame:
        """Committed work keys, filtered while reading (a season holds hundreds of thousands)."""
        conditions = []
        if model_id is not None:
            conditions.append(ds.field("model_id") == model_id)
        if settings_hash is not None:
            conditions.append(ds.field("settings_hash") == settings_hash)
        if recording_ids is not None:
            conditions.append(ds.field("recording_id").isin(list(recording_ids)))
        flt = None
        for cond in conditions:
            flt = cond if flt is None else flt & cond
        return self._done_rows(flt, columns, snap, None if model_id is None else [model_id])

    def committed_flushes(self, snap=None) -> dict[tuple[str, int], int]:
        """(run, commit number) -> done rows, of every flush live in one snapshot."""
        return committed_flushes(self.results, self.snapshot() if snap is None else snap)

    def next_seq(self, run_id: str, lo: int = 0, hi: int = 10**9) -> int:
        """First free commit number of ``run_id`` in [lo, hi): a retried shard never reuses one."""
        used = [seq for run, seq in self.committed_flushes() if run == run_id and lo <= seq < hi]
        return max(used) + 1 if used else lo

    def done_keys(self, model_id: str, settings_hash: str) -> set[str]:
        """Recording ids already committed for this model and settings."""
        return set(self.done_table(model_id, settings_hash, columns=["recording_id"])["recording_id"])

    def commit(self, run_id: str, seq: int, flush: Flush, replace: bool = False,
               lock_timeout_s: float = 600.0, snap=None, done_files: DoneFiles | None = None) -> Committed:
        """Make a flush visible atomically, as one Delta transaction; returns the done rows committed.

        Recordings that another writer committed meanwhile are dropped (never doubled), unless
        ``replace`` is set, in which case their old rows are replaced (``--force``). Rows a
        commit makes out of date are replaced too: the same model's rows of the same
        recording under other settings, and of an earlier content of the same path (a file
        rewritten after it was analysed). So each recording path holds one set of rows per
        model, and counts never add up two analyses of one piece of audio. Concurrent writers
        need no lock: a commit that loses the race rereads the table and tries again.
        ``lock_timeout_s`` is kept for callers; it is not used. ``snap``: a snapshot (of
        ``snapshot()``) that the caller keeps across its commits; it is brought up to date in
        place (only the log entries since its version are read) and the commit built on it,
        instead of opening the table afresh: the same check, without replaying the whole log.
        ``done_files``: a ``DoneFiles`` the caller passes to each of its commits, so that the
        check reads each done file once (its rows never change), not at every commit.
        """
        self._writable()
        self.ensure()
        return commit_flush(self.results, run_id, seq, flush, replace, snap, done_files)

    def retire(self, recording_ids: Iterable[str], lock_timeout_s: float = 600.0) -> int:
        """Remove every model's done and detection rows of these recordings, so that the next
        detection run analyses them again (their start times changed). Returns the done rows
        removed. One transaction."""
        ids = list(dict.fromkeys(recording_ids))
        if not ids:
            return 0
        self._writable()
        self.ensure()
        return retire_recordings(self.results, ids)

    def unnamed_files(self) -> list[Path]:
        """Files under ``results/`` that no version of the table names (a writer died between
        writing them and committing), and delta-rs's temporary log files (``_delta_log/*.tmp``,
        a writer died inside its commit). Nobody reads them."""
        return unnamed_files(self)

    def recover(self, lock_timeout_s: float = 600.0, orphan_age_s: float = ORPHAN_AGE_S) -> int:
        """Delete what crashed writers left: files under ``results/`` that no version of the table
        names and that are older than ``orphan_age_s`` (younger ones may belong to a commit in
        flight on another machine), and temporary files. Returns the files deleted."""
        return recover(self, orphan_age_s)

    # -- compaction and retention (pam.store.compaction) ------------------------------------
    def compact(self, min_files: int = 2) -> Compacted:
        """Rewrite each detection partition (site, UTC month) and each site's done files holding
        at least ``min_files`` live files as one file, then checkpoint; no row changes. The
        nightly run calls it after its summaries."""
        self._writable()
        return compact(self.results, min_files)

    def vacuum(self, retention_days: float = 7.0) -> list[str]:
        """Delete files that versions older than ``retention_days`` removed (time travel reaches
        back that far), and checkpoint the log. Returns the files deleted."""
        self._writable()
        return vacuum(self.results, retention_days)

    def history(self, limit: int | None = None) -> list[dict]:
        """The results table's versions, newest first: version, timestamp (ms), operation."""
        return history(self.snapshot(), limit)

    # -- reading detections -----------------------------------------------------------
    def detection_files(self, sites: Iterable[str] | None = None, start: date | None = None,
                        end: date | None = None, snap=None) -> list[Path]:
        """The live detection files of one snapshot, pruned by site and UTC date (from the
        table's log alone: no file is opened)."""
        snap = self.snapshot() if snap is None else snap
        return [self.results_dir / f.path for f in ResultsTable.pruned_files(snap, DETECTION, sites, start, end)]

    def done_files(self, snap=None) -> list[Path]:
        """The live done files of one snapshot."""
        snap = self.snapshot() if snap is None else snap
        return [self.results_dir / f.path for f in ResultsTable.files(snap, DONE)]

    def detections_dataset(self, files: list[Path] | None = None, dictionary_strings: bool = False) -> ds.Dataset:
        files = self.detection_files() if files is None else files
        entries = []
        for p in files:
            rel = Path(p).relative_to(self.results_dir).as_posix()
            entries.append(ResultFile(rel, DETECTION, unquote(Path(p).parent.parent.name[len("site="):]),
                                      Path(p).parent.name[len("month="):], 0))
        return self.results.dataset(entries, DETECTION, dictionary_strings=dictionary_strings)

    def read_detections(self, columns: list[str] | None = None, snap=None) -> pd.DataFrame:
        """All committed detections as a DataFrame (site and date included)."""
        return self.detections_dataset(self.detection_files(snap=snap)).to_table(columns=columns).to_pandas()

    # -- runs -------------------------------------------------------------------------
    def write_run(self, row: dict) -> None:
        table = pa.Table.from_pylist([row], schema=schemas.with_version("runs"))
        self.location.write_parquet(table, f"runs/run-{row['run_id']}.parquet")

    def read_run(self, run_id: str) -> dict | None:
        """One run's row as a dict, or None when the run never started here."""
        rel = f"runs/run-{run_id}.parquet"
        if not self.location.exists(rel):
            return None
        return self.location.read_parquet(rel, schemas.RUNS).to_pylist()[0]

    def run_files(self) -> list[str]:
        """The runs table's files (file system paths of ``location.fs``)."""
        return self.location.list("runs", "run-", ".parquet")

    def read_runs(self) -> pd.DataFrame:
        files = self.run_files()
        if not files:
            return schemas.RUNS.empty_table().to_pandas()
        return self.location.dataset(files, schemas.RUNS).to_table().to_pandas()

    # -- derived tables: read here, written by pam.analysis ------------------------------------
    def summary_path(self, name: str) -> Path:
        return self.root / self.summary_rel(name)

    @staticmethod
    def summary_rel(name: str) -> str:
        return f"summaries/{name}/{name}.parquet"

    def has_summary(self, name: str) -> bool:
        return self.location.exists(self.summary_rel(name))

    def write_summary(self, name: str, table: pa.Table) -> None:
        self.location.write_parquet(table, self.summary_rel(name))

    def read_summary(self, name: str) -> pd.DataFrame:
        """A summary table (daily_counts, site_days, diel, occupancy, ...) as last computed; empty
        with the right columns if not computed yet."""
        if name not in SUMMARY_TABLES:
            raise KeyError(f"unknown summary {name!r}; known: {', '.join(SUMMARY_TABLES)}")
        schema = schemas.TABLES[name][0]
        if not self.has_summary(name):
            return schema.empty_table().to_pandas()
        return self.location.read_parquet(self.summary_rel(name), schema).to_pandas()

    def verified_files(self) -> list[Path]:
        return [type(self.root)(p) for p in self.location.list("labels", "verified-", ".parquet")]

    def read_verified(self) -> pd.DataFrame:
        """Human verdicts imported with ``pam review-import``; a window judged again keeps only its
        latest verdict."""
        files = self.verified_files()
        if not files:
            return schemas.VERIFIED.empty_table().to_pandas()
        frame = self.location.dataset([str(f) for f in files], schemas.VERIFIED).to_table().to_pandas()
        frame = frame.sort_values("imported_at", kind="stable")
        return frame.drop_duplicates(["path", "start_s", "end_s", "label"], keep="last").reset_index(drop=True)


def open(root: str | Path) -> Store:  # noqa: A001 - mirrors pam.store.open in the docs
    """Open a store folder for reading from a notebook or script."""
    return Store(root)
