"""The store: a folder of Parquet tables that is the single source of truth.

Layout (see ``docs/store.md``)::

    STORE/
      manifest/manifest.parquet            one row per recording path seen
      detections/site=S/date=D/part-<run>-<seq>.parquet
      done/done-<run>-<seq>.parquet        work keys committed by that flush
      runs/run-<run>.parquet               one row per run
      models/model-<id>.parquet            model registry rows
      summaries/<name>/...                 derived tables
      .lock                                held only while committing

Commit protocol, which makes every stage idempotent and crash-safe:

1. under the store lock, write each detection part to a hidden temporary name, fsync it
   and rename it into place (``part-<run>-<seq>.parquet``);
2. then write ``done/done-<run>-<seq>.parquet`` the same way.

A part file counts only when its ``done`` file exists, so a crash between 1 and 2 leaves
parts nobody reads, and the next commit deletes them. Recordings already committed by
another run are dropped at commit time, so two runs on one store never double a row.
Replacing rows (``--force``; new settings for a recording; a rewritten file's old content)
goes through a journal (``.replace-<run>-<seq>.json``) so that a crash half-way is finished
by the next run rather than losing or doubling rows.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import quote

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

import pam.store.schemas as schemas
from pam.store.atomic import TMP_NAME, fsync_dir as _fsync_dir, write_parquet_atomic, write_text_atomic

PART_NAME = re.compile(r"^part-(?P<run>[^-]+-[0-9a-f]+)-(?P<seq>\d+)\.parquet$")
DONE_NAME = re.compile(r"^done-(?P<run>[^-]+-[0-9a-f]+)-(?P<seq>\d+)\.parquet$")
JOURNAL_NAME = re.compile(r"^\.replace-(?P<run>[^-]+-[0-9a-f]+)-(?P<seq>\d+)\.json$")
RETIRE_NAME = re.compile(r"^\.retire-[0-9a-f]+\.json$")
UNKNOWN = "unknown"


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


def _write_json_atomic(obj: object, path: Path) -> None:
    write_text_atomic(json.dumps(obj), path)


def partition_dir(site: str | None, day: str | None) -> str:
    """Hive folder of a site and UTC day; a missing one (None, or NaN out of a pandas groupby) is 'unknown'."""
    site = site if isinstance(site, str) and site else UNKNOWN
    day = day if isinstance(day, str) and day else UNKNOWN
    return f"site={quote(site, safe='')}/date={day}"


@dataclass(frozen=True)
class Flush:
    """One commit's worth of work: detection rows (with site and date) and done rows."""

    detections: pa.Table  # schemas.DETECTIONS plus string columns site, date
    done: pa.Table  # schemas.DONE


@dataclass(frozen=True)
class Committed:
    """What a commit made visible, and how many earlier analyses it made out of date."""

    done: pa.Table  # the done rows committed (recordings another run had committed are left out)
    superseded: int  # older done rows replaced: same recording under other settings, or the path's old content


def _keys_not_in(table: pa.Table, keys: set[tuple[str, str, str]]) -> list[bool]:
    """Per row of ``table``: its (recording_id, model_id, settings_hash) is not among ``keys``."""
    return [k not in keys for k in zip(table.column("recording_id").to_pylist(), table.column("model_id").to_pylist(),
                                       table.column("settings_hash").to_pylist())]


def _out_of_date(existing: pd.DataFrame, done: pa.Table) -> pd.DataFrame:
    """Done rows of ``existing`` that ``done`` replaces: for the same model, the same recording
    under other settings, or another recording (an earlier content) at the same path."""
    model = done.column("model_id").to_pylist()
    settings = dict(zip(zip(done.column("recording_id").to_pylist(), model), done.column("settings_hash").to_pylist()))
    current = {(p, m): r for r, p, m in zip(done.column("recording_id").to_pylist(), done.column("path").to_pylist(),
                                          model) if p}
    stale = []
    for r, m, k, p in zip(existing["recording_id"], existing["model_id"], existing["settings_hash"], existing["path"]):
        other_settings = (r, m) in settings and settings[(r, m)] != k
        other_content = (p, m) in current and current[(p, m)] != r
        stale.append(other_settings or other_content)
    return existing.loc[pd.Series(stale, index=existing.index, dtype=bool)]


class Store:
    """One store folder. Cheap to construct; nothing is read until asked."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    # -- layout -----------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest" / "manifest.parquet"

    @property
    def detections_dir(self) -> Path:
        return self.root / "detections"

    @property
    def done_dir(self) -> Path:
        return self.root / "done"

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

    def ensure(self) -> "Store":
        for d in (self.root, self.detections_dir, self.done_dir, self.runs_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self

    # -- locking ----------------------------------------------------------------------
    @contextmanager
    def lock(self, timeout_s: float = 600.0, what: str = "commit") -> Iterator[None]:
        """Exclusive lock on the store; waits up to ``timeout_s`` then raises StoreBusy."""
        self.ensure()
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
        raises StoreBusy naming the holder. Re-entrant within a process (flow -> stages)."""
        self.ensure()
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
        if not self.manifest_path.exists():
            return schemas.MANIFEST.empty_table().to_pandas()
        return pq.read_table(self.manifest_path, schema=schemas.MANIFEST).to_pandas()

    def write_manifest(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, schema=schemas.with_version("manifest"), preserve_index=False)
        write_parquet_atomic(table, self.manifest_path)

    # -- commit -----------------------------------------------------------------------
    def _committed_flushes(self) -> set[tuple[str, int]]:
        if not self.done_dir.exists():
            return set()
        out = set()
        for entry in os.scandir(self.done_dir):
            if m := DONE_NAME.match(entry.name):
                out.add((m["run"], int(m["seq"])))
        return out

    def _done_rows(self, flt: ds.Expression | None, columns: list[str] | None) -> pd.DataFrame:
        files = sorted(p for p in self.done_dir.glob("done-*.parquet")) if self.done_dir.exists() else []
        if not files:
            empty = schemas.DONE.empty_table()
            return (empty.select(columns) if columns else empty).to_pandas()
        table = ds.dataset([str(f) for f in files], schema=schemas.DONE, format="parquet")
        return table.to_table(filter=flt, columns=columns).to_pandas()

    def done_table(self, model_id: str | None = None, settings_hash: str | None = None,
                   recording_ids: Iterable[str] | None = None, columns: list[str] | None = None) -> pd.DataFrame:
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
        return self._done_rows(flt, columns)

    def next_seq(self, run_id: str, lo: int = 0, hi: int = 10**9) -> int:
        """First free commit number of ``run_id`` in [lo, hi): a retried shard never reuses one."""
        used = [seq for run, seq in self._committed_flushes() if run == run_id and lo <= seq < hi]
        return max(used) + 1 if used else lo

    def done_keys(self, model_id: str, settings_hash: str) -> set[str]:
        """Recording ids already committed for this model and settings."""
        return set(self.done_table(model_id, settings_hash, columns=["recording_id"])["recording_id"])

    def commit(self, run_id: str, seq: int, flush: Flush, replace: bool = False,
               lock_timeout_s: float = 600.0) -> Committed:
        """Make a flush visible atomically; returns the done rows actually committed.

        Recordings that another run committed meanwhile are dropped (never doubled), unless
        ``replace`` is set, in which case their old rows are replaced (``--force``). Rows a
        commit makes out of date are replaced too: the same model's rows of the same
        recording under other settings, and of an earlier content of the same path (a file
        rewritten after it was analysed). So each recording path holds one set of rows per
        model, and counts never add up two analyses of one piece of audio.
        """
        with self.lock(lock_timeout_s, what=f"commit {run_id}-{seq}"):
            if not self.holds_run_lock():
                # A run recovers once when it takes the run lock; a bare commit (a script, a
                # Dask worker process) cleans up here instead.
                self._recover_locked()
            done = flush.done
            detections = flush.detections
            ids = set(done.column("recording_id").to_pylist())
            paths = {p for p in done.column("path").to_pylist() if p}
            existing = self._done_rows((ds.field("recording_id").isin(list(ids))
                                        | ds.field("path").isin(list(paths))),
                                       ["recording_id", "model_id", "settings_hash", "run_id", "path"])
            keys = set(zip(done.column("model_id").to_pylist(), done.column("settings_hash").to_pylist()))
            mine = [(m, k) in keys and r in ids for r, m, k in
                    zip(existing["recording_id"], existing["model_id"], existing["settings_hash"])]
            already = existing.loc[pd.Series(mine, index=existing.index, dtype=bool)]
            if len(already) and not replace:
                # drop only the work keys (recording, model, settings) committed meanwhile: one
                # flush may hold several models' rows of a recording
                clash = set(zip(already["recording_id"], already["model_id"], already["settings_hash"]))
                done = done.filter(pa.array(_keys_not_in(done, clash), type=pa.bool_()))
                detections = detections.filter(pa.array(_keys_not_in(detections, clash), type=pa.bool_()))
                already = already.iloc[0:0]
            if done.num_rows == 0:
                return Committed(done, 0)
            stale = _out_of_date(existing, done)
            old = pd.concat([already, stale])
            self._drop_uncommitted_parts(run_id, seq)
            self._write_parts(run_id, seq, detections)
            journal = self.root / f".replace-{run_id}-{seq:05d}.json"
            if len(old):
                _write_json_atomic(
                    {"keys": old[["recording_id", "model_id", "settings_hash", "run_id"]].values.tolist()},
                    journal,
                )
            write_parquet_atomic(done.cast(schemas.with_version("done")),
                                 self.done_dir / f"done-{run_id}-{seq:05d}.parquet")
            if len(old):
                self._apply_journal(journal, own=(run_id, seq))
            return Committed(done, len(stale))

    def _drop_uncommitted_parts(self, run_id: str, seq: int) -> None:
        """Parts a failed attempt of this commit number left (issue 12, defect 1): a retry may
        group recordings differently, and its done file must not cover them."""
        if (run_id, seq) in self._committed_flushes():
            raise ValueError(f"commit {run_id}-{seq} was already made; take a new number (next_seq)")
        name = f"part-{run_id}-{seq:05d}.parquet"
        for dirpath, _dirs, files in os.walk(self.detections_dir):
            if name in files:
                os.unlink(os.path.join(dirpath, name))

    def _write_parts(self, run_id: str, seq: int, detections: pa.Table) -> None:
        if detections.num_rows == 0:
            return
        frame = detections.to_pandas()
        for (site, day), group in frame.groupby(["site", "date"], sort=True, dropna=False):
            part = pa.Table.from_pandas(
                group.drop(columns=["site", "date"]), schema=schemas.with_version("detections"),
                preserve_index=False,
            )
            path = self.detections_dir / partition_dir(site, day) / f"part-{run_id}-{seq:05d}.parquet"
            write_parquet_atomic(part, path)

    def _apply_journal(self, journal: Path, own: tuple[str, int] | None = None) -> None:
        """Remove the superseded rows a --force commit listed, then drop the journal. ``own``: the
        commit that wrote the journal, whose new files are not superseded (issue 12, defect 2)."""
        keys = {tuple(k) for k in json.loads(journal.read_text())["keys"]}
        by_run: dict[str, set[tuple[str, str, str]]] = {}
        for rec, model, settings, run in keys:
            by_run.setdefault(run, set()).add((rec, model, settings))
        for run, drop in by_run.items():
            for path in list(self.detections_dir.rglob(f"part-{run}-*.parquet")) + list(
                self.done_dir.glob(f"done-{run}-*.parquet")
            ):
                if own is not None and (m := PART_NAME.match(path.name) or DONE_NAME.match(path.name)) \
                        and (m["run"], int(m["seq"])) == own:
                    continue
                table = pq.read_table(path)
                mask = [
                    (r, m, s) not in drop
                    for r, m, s in zip(table.column("recording_id").to_pylist(),
                                       table.column("model_id").to_pylist(),
                                       table.column("settings_hash").to_pylist())
                ]
                if all(mask):
                    continue
                kept = table.filter(pa.array(mask))
                if kept.num_rows == 0:
                    path.unlink()
                else:
                    write_parquet_atomic(kept, path)
        journal.unlink()
        _fsync_dir(self.root)

    def retire(self, recording_ids: Iterable[str], lock_timeout_s: float = 600.0) -> int:
        """Remove every model's done and detection rows of these recordings, so that the next
        detection run analyses them again (their start times changed). Returns the done rows
        removed. Journalled: a crash half-way is finished by the next commit or ``recover()``."""
        ids = list(dict.fromkeys(recording_ids))
        if not ids:
            return 0
        with self.lock(lock_timeout_s, what="retire"):
            old = self.done_table(recording_ids=ids, columns=["recording_id", "model_id", "settings_hash", "run_id"])
            if old.empty:
                return 0
            journal = self.root / f".retire-{uuid.uuid4().hex[:12]}.json"
            _write_json_atomic({"keys": old.values.tolist()}, journal)
            self._apply_journal(journal)
            return len(old)

    def _recover_locked(self) -> None:
        """Finish or discard what a crashed run left: journals, orphan parts, temp files."""
        committed = self._committed_flushes()
        for entry in list(os.scandir(self.root)):
            if m := JOURNAL_NAME.match(entry.name):
                if (m["run"], int(m["seq"])) in committed:
                    self._apply_journal(Path(entry.path), own=(m["run"], int(m["seq"])))
                else:
                    os.unlink(entry.path)
            elif RETIRE_NAME.match(entry.name):
                self._apply_journal(Path(entry.path))
        if self.detections_dir.exists():
            for dirpath, _dirs, files in os.walk(self.detections_dir):
                for name in files:
                    m = PART_NAME.match(name)
                    stale_tmp = name.startswith(".") and name.endswith(".tmp")
                    if stale_tmp or (m and (m["run"], int(m["seq"])) not in committed):
                        os.unlink(os.path.join(dirpath, name))
        for d in (self.done_dir, self.runs_dir, self.root / "manifest", self.root / "config"):
            if d.exists():
                for entry in os.scandir(d):
                    if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                        os.unlink(entry.path)
        if self.holds_run_lock():
            # Only runs write reports and summaries, so with the run lock held no other
            # writer can own a temporary file there.
            for d in (self.reports_dir, self.summaries_dir):
                for dirpath, _dirs, files in os.walk(d):
                    for name in files:
                        if TMP_NAME.match(name):
                            os.unlink(os.path.join(dirpath, name))

    def recover(self, lock_timeout_s: float = 600.0) -> None:
        """Finish or discard what a crashed run left (journals, orphan parts, temp files)."""
        with self.lock(lock_timeout_s, what="recover"):
            self._recover_locked()

    # -- reading detections -----------------------------------------------------------
    def detection_files(
        self,
        sites: Iterable[str] | None = None,
        start: date | None = None,
        end: date | None = None,
    ) -> list[Path]:
        """Committed part files, pruned by site and UTC date from folder names alone."""
        if not self.detections_dir.exists():
            return []
        committed = self._committed_flushes()
        wanted_sites = {quote(s, safe="") for s in sites} if sites is not None else None
        out: list[Path] = []
        for site_entry in sorted(os.scandir(self.detections_dir), key=lambda e: e.name):
            if not site_entry.name.startswith("site="):
                continue
            if wanted_sites is not None and site_entry.name[5:] not in wanted_sites:
                continue
            for date_entry in sorted(os.scandir(site_entry.path), key=lambda e: e.name):
                if not date_entry.name.startswith("date="):
                    continue
                day = date_entry.name[5:]
                if (start or end) and day != UNKNOWN:
                    d = date.fromisoformat(day)
                    if (start and d < start) or (end and d > end):
                        continue
                for f in sorted(os.scandir(date_entry.path), key=lambda e: e.name):
                    m = PART_NAME.match(f.name)
                    if m and (m["run"], int(m["seq"])) in committed:
                        out.append(Path(f.path))
        return out

    def detections_dataset(self, files: list[Path] | None = None) -> ds.Dataset:
        files = self.detection_files() if files is None else files
        partitioning = ds.partitioning(schemas.DETECTION_PARTITIONS, flavor="hive")
        full = pa.schema(list(schemas.DETECTIONS) + list(schemas.DETECTION_PARTITIONS))
        return ds.dataset(
            [str(f) for f in files], schema=full, format="parquet",
            partitioning=partitioning, partition_base_dir=str(self.detections_dir),
        )

    def read_detections(self, columns: list[str] | None = None) -> pd.DataFrame:
        """All committed detections as a DataFrame (site and date included)."""
        return self.detections_dataset().to_table(columns=columns).to_pandas()

    # -- runs -------------------------------------------------------------------------
    def write_run(self, row: dict) -> None:
        table = pa.Table.from_pylist([row], schema=schemas.with_version("runs"))
        write_parquet_atomic(table, self.runs_dir / f"run-{row['run_id']}.parquet")

    def read_run(self, run_id: str) -> dict | None:
        """One run's row as a dict, or None when the run never started here."""
        path = self.runs_dir / f"run-{run_id}.parquet"
        if not path.exists():
            return None
        return pq.read_table(path, schema=schemas.RUNS).to_pylist()[0]

    def read_runs(self) -> pd.DataFrame:
        files = sorted(self.runs_dir.glob("run-*.parquet")) if self.runs_dir.exists() else []
        if not files:
            return schemas.RUNS.empty_table().to_pandas()
        return ds.dataset([str(f) for f in files], schema=schemas.RUNS).to_table().to_pandas()

    # -- derived tables: read here, written by pam.analysis ------------------------------------
    def summary_path(self, name: str) -> Path:
        return self.summaries_dir / name / f"{name}.parquet"

    def read_summary(self, name: str) -> pd.DataFrame:
        """A summary table (daily_counts, site_days, diel, occupancy, ...) as last computed; empty
        with the right columns if not computed yet."""
        if name not in SUMMARY_TABLES:
            raise KeyError(f"unknown summary {name!r}; known: {', '.join(SUMMARY_TABLES)}")
        path = self.summary_path(name)
        schema = schemas.TABLES[name][0]
        if not path.exists():
            return schema.empty_table().to_pandas()
        return pq.read_table(path, schema=schema).to_pandas()

    def verified_files(self) -> list[Path]:
        folder = self.root / "labels"
        return sorted(folder.glob("verified-*.parquet")) if folder.is_dir() else []

    def read_verified(self) -> pd.DataFrame:
        """Human verdicts imported with ``pam review-import``; a window judged again keeps only its
        latest verdict."""
        files = self.verified_files()
        if not files:
            return schemas.VERIFIED.empty_table().to_pandas()
        frame = ds.dataset([str(f) for f in files], schema=schemas.VERIFIED).to_table().to_pandas()
        frame = frame.sort_values("imported_at", kind="stable")
        return frame.drop_duplicates(["path", "start_s", "end_s", "label"], keep="last").reset_index(drop=True)


def open(root: str | Path) -> Store:  # noqa: A001 - mirrors pam.store.open in the docs
    """Open a store folder for reading from a notebook or script."""
    return Store(root)
