"""``pam store migrate OLD NEW``: a store of an earlier layout as a store of today's.

Two earlier layouts are converted: the folder layout (pam before issue 12, below), and the
results table partitioned by (kind, site, UTC date) (before month partitions), whose live
files are each written again with their date as a column (and done files with their commit
number), keeping their names, in one transaction.

The folder layout kept detections in ``detections/site=S/date=D/part-<run>-<seq>.parquet`` and
their completion in ``done/done-<run>-<seq>.parquet``; a part counted only when the done file of
its run and commit number existed, and rows a ``--force`` commit or a retire replaced were
listed in journals (``.replace-<run>-<seq>.json``, ``.retire-<id>.json``) until removed.
Migration reads exactly what that store's readers saw (committed parts, journals applied),
writes it into ``NEW/results`` as one Delta transaction, already compacted (one detection file
per site and UTC month, rows sorted by time; one done file per site, each row keeping its
commit number in ``commit_seq`` so ``Store.next_seq`` still counts them), copies every
other table and file as it is, and compares the row counts before it returns. OLD is only read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq

from deltalake import DeltaTable

from pam.store.compaction import SORT
from pam.store.results import (DETECTION, DETECTION_FILE, DONE, DONE_FILE, EMBEDDING, EMBEDDING_FILE, OLD_PARTITIONS,
                               ROW_GROUP, ResultsTable, month_of)
from pam.store.location import require_local_root
from pam.store.store import Store
from pam.store.transactions import DONE_NAME

OLD_PART = re.compile(r"^part-(?P<run>[^-]+-[0-9a-f]+)-(?P<seq>\d+)\.parquet$")
OLD_DONE = re.compile(r"^done-(?P<run>[^-]+-[0-9a-f]+)-(?P<seq>\d+)\.parquet$")
OLD_REPLACE = re.compile(r"^\.replace-(?P<run>[^-]+-[0-9a-f]+)-(?P<seq>\d+)\.json$")
OLD_RETIRE = re.compile(r"^\.retire-[0-9a-f]+\.json$")
# Copied as they are; the folder layout's detections/ and done/ become results/.
SKIP = {"detections", "done", "results", ".lock", ".run.lock"}


class MigrationError(RuntimeError):
    """The old store cannot be migrated as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Migrated:
    detection_rows: int
    done_rows: int
    files: int  # data files written into results/
    copied: int  # other files copied


def is_folder_layout(root: Path) -> bool:
    return (root / "done").is_dir() or (root / "detections").is_dir()


def is_date_partitioned(root: Path) -> bool:
    """A results table of the (kind, site, date) layout."""
    if not (root / "results" / "_delta_log").is_dir():
        return False
    return DeltaTable(str(root / "results")).metadata().partition_columns == OLD_PARTITIONS


def with_date(rows: pa.Table, day: str | None, schema: pa.Schema) -> pa.Table:
    """Rows of a file of the date layout with their date as a column."""
    rows = rows.select([n for n in schema.names if n != "date"])
    return rows.append_column("date", pa.array([day or "unknown"] * rows.num_rows, pa.string())).cast(schema)


def with_seq(rows: pa.Table, seq: int | None) -> pa.Table:
    rows = rows.select([n for n in DONE_FILE.names if n != "commit_seq"])
    return rows.append_column("commit_seq", pa.array([seq] * rows.num_rows, pa.int64())).cast(DONE_FILE)


def _journal_keys(old: Path, committed: set[tuple[str, int]]) -> list[tuple[set[tuple], tuple[str, int] | None]]:
    """Pending journals: the (recording, model, settings, run) keys each removes, and the commit
    whose own files it spares. A replace journal of a commit that never wrote its done file is void."""
    out = []
    for entry in sorted(os.scandir(old), key=lambda e: e.name):
        own = None
        if m := OLD_REPLACE.match(entry.name):
            own = (m["run"], int(m["seq"]))
            if own not in committed:
                continue
        elif not OLD_RETIRE.match(entry.name):
            continue
        keys = {tuple(k) for k in json.loads(Path(entry.path).read_text())["keys"]}
        out.append((keys, own))
    return out


def _without_journalled(table: pa.Table, flush: tuple[str, int], journals) -> pa.Table:
    for keys, own in journals:
        if own == flush:
            continue
        mask = [(r, m, s, run) not in keys for r, m, s, run in zip(
            *(table.column(c).to_pylist() for c in ("recording_id", "model_id", "settings_hash", "run_id")))]
        if not all(mask):
            table = table.filter(pa.array(mask))
    return table


def migrate(old_root: str | Path, new_root: str | Path) -> Migrated:
    """Write the folder-layout store at ``old_root`` as a new store at ``new_root`` (which must not
    exist or be empty). Raises MigrationError before writing anything when it cannot."""
    for root in (old_root, new_root):
        require_local_root(root, "pam store migrate")
    old, new = Path(old_root).expanduser().resolve(), Path(new_root).expanduser().resolve()
    if not old.is_dir():
        raise MigrationError(f"store {old} does not exist")
    date_layout = is_date_partitioned(old)
    if not date_layout and not is_folder_layout(old):
        raise MigrationError(f"{old} is neither a store of the folder layout (detections/, done/) nor one whose "
                             "results table is partitioned by date: it needs no migration")
    if new.exists() and any(new.iterdir()):
        raise MigrationError(f"{new} exists and is not empty; give a new folder")
    if new == old or old in new.parents:
        raise MigrationError(f"{new} lies inside the old store {old}; give a folder outside it")
    if date_layout:
        return _finish(old, new, *_from_date_layout(old, new))
    done_files = {}
    for entry in os.scandir(old / "done") if (old / "done").is_dir() else []:
        if m := OLD_DONE.match(entry.name):
            done_files[(m["run"], int(m["seq"]))] = Path(entry.path)
    journals = _journal_keys(old, set(done_files))
    store = Store(new).ensure()
    table = store.results
    adds, det_rows, done_rows = [], 0, 0
    # Written already compacted: one detection file per site and UTC month (rows sorted by time,
    # in row groups, as pam store compact writes them) and one done file per site, so that a
    # migrated season opens and scans like a compacted one (docs/store.md#migration).
    month_rows: list[pa.Table] = []
    month_key: tuple[str, str] | None = None

    def write_month() -> None:
        if month_rows:
            rows = pa.concat_tables(month_rows).sort_by(SORT[DETECTION])
            adds.append(table.write_file(rows, DETECTION, month_key[0], "migrate", row_group_size=ROW_GROUP))
            month_rows.clear()

    try:
        for dirpath, _dirs, names in sorted(os.walk(old / "detections")):
            folder = Path(dirpath)
            if not folder.name.startswith("date=") or not folder.parent.name.startswith("site="):
                continue
            site, day = unquote(folder.parent.name[5:]), folder.name[5:]
            if (site, month_of(day)) != month_key:
                write_month()
                month_key = (site, month_of(day))
            for name in sorted(names):
                m = OLD_PART.match(name)
                if not m or (m["run"], int(m["seq"])) not in done_files:
                    continue  # a part no done file covers was never visible
                rows = with_date(pq.read_table(folder / name), day, DETECTION_FILE)
                rows = _without_journalled(rows, (m["run"], int(m["seq"])), journals)
                if rows.num_rows:
                    det_rows += rows.num_rows
                    month_rows.append(rows)
        write_month()
        done_by_site: dict[str | None, list[pa.Table]] = {}
        for (run, seq), path in sorted(done_files.items()):
            rows = _without_journalled(with_seq(pq.read_table(path), seq), (run, seq), journals)
            sites = rows.column("site").to_pylist()
            for site in sorted(set(sites), key=lambda s: (s is None, s or "")):
                part = rows.filter(pa.array([s == site for s in sites]))
                done_rows += part.num_rows
                done_by_site.setdefault(site, []).append(part)
        for site, parts in done_by_site.items():
            adds.append(table.write_file(pa.concat_tables(parts).sort_by(SORT[DONE]), DONE, site, "migrate"))
        _commit(table, adds, new)
    except BaseException:
        table.delete_files(adds)
        raise
    return _finish(old, new, store, det_rows, done_rows, len(adds))


def _commit(table: ResultsTable, adds: list, new: Path) -> None:
    if not table.commit(table.ensure(), adds, [], "migrate"):
        raise MigrationError(f"another writer committed to {new} during the migration; start again in an empty folder")


def _from_date_layout(old: Path, new: Path) -> tuple[Store, int, int, int]:
    """Every live file of the old table written again into ``new`` (one transaction)."""
    dt = DeltaTable(str(old / "results"))
    actions = pa.table(dt.get_add_actions(flatten=True))
    store = Store(new).ensure()
    table = store.results
    adds, det_rows, done_rows = [], 0, 0
    schema = {DETECTION: DETECTION_FILE, EMBEDDING: EMBEDDING_FILE}
    try:
        for path, kind, site, day in sorted(zip(*(actions.column(c).to_pylist() for c in (
                "path", "partition.kind", "partition.site", "partition.date"))), key=lambda a: a[0]):
            rel = unquote(path)
            name = rel.rsplit("/", 1)[-1]
            rows = pq.read_table(old / "results" / rel)
            if kind == DONE:
                m = DONE_NAME.match(name)
                rows = with_seq(rows, int(m["seq"]) if m else None)
                done_rows += rows.num_rows
            else:
                rows = with_date(rows, day, schema[kind])
                det_rows += rows.num_rows if kind == DETECTION else 0
            if rows.num_rows:
                adds.append(table.write_file(rows, kind, site, name.rsplit("-", 1)[0]))
        _commit(table, adds, new)
    except BaseException:
        table.delete_files(adds)
        raise
    return store, det_rows, done_rows, len(adds)


def _finish(old: Path, new: Path, store: Store, det_rows: int, done_rows: int, files: int) -> Migrated:
    table = store.results
    # That one commit names every file of the season (500 for the 12-million-row benchmark
    # season from the folder layout, its live files from the date layout); a checkpoint lets
    # readers open the table from one Parquet file instead of parsing its JSON.
    table.snapshot().create_checkpoint()
    copied = _copy_rest(old, new)
    got_det, got_done = len(store.read_detections(columns=["recording_id"])), len(store.done_table(columns=["run_id"]))
    if (got_det, got_done) != (det_rows, done_rows):
        raise MigrationError(f"{new}: read back {got_det} detection and {got_done} done rows, wrote {det_rows} and "
                             f"{done_rows}; the new store is incomplete, delete it and report this")
    return Migrated(det_rows, done_rows, files, copied)


def _copy_rest(old: Path, new: Path) -> int:
    copied = 0
    for entry in sorted(os.scandir(old), key=lambda e: e.name):
        if entry.name in SKIP or OLD_REPLACE.match(entry.name) or OLD_RETIRE.match(entry.name):
            continue
        target = new / entry.name
        if entry.is_dir():
            shutil.copytree(entry.path, target, dirs_exist_ok=True)
            copied += sum(len(files) for _d, _s, files in os.walk(target))
        else:
            shutil.copy2(entry.path, target)
            copied += 1
    return copied


__all__ = ["MigrationError", "Migrated", "is_folder_layout", "migrate"]
