"""Compaction and retention of the ``results`` table (docs/store.md#compaction-and-retention).

Every flush writes one detection file per site and UTC day it touched and one done file per
site, so a season leaves tens of thousands of small files, and reading or even listing them
costs more than their rows. ``compact`` rewrites, in transactions that change no row
(``dataChange: false``):

- each detection partition (site, UTC month) holding more than one live file as one file,
  rows sorted by time, in row groups of ``ROW_GROUP`` rows (a site-week read skips the rest);
- each site's done files as one file (done rows carry their commit number, ``commit_seq``,
  so ``Store.next_seq`` and the summaries do not need the file names).

Embedding files are left as they are: a day of 1024-d vectors is already a large file.
Readers of any version see the same rows; a commit racing a compaction is retried like any
other (the compaction rereads and starts the conflicting batch over; a writer that loses to
it rereads and replaces rows in the compacted file). A compaction that rewrote anything ends
with a checkpoint, so the next open reads one Parquet file instead of the JSON commits.

``vacuum`` deletes the files that versions older than the retention removed (compacted,
replaced or retired files), so time travel reaches back as far as the retention and no
further; then it writes a checkpoint of the log.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
from deltalake import DeltaTable

from pam.store.results import DETECTION, DETECTION_FILE, DONE, DONE_FILE, ROW_GROUP, ResultFile, ResultsTable

# Partitions compacted per transaction: a batch that loses a race is rewritten, not the whole run.
BATCH = 64
SORT = {DETECTION: [("start_time", "ascending"), ("recording_id", "ascending"), ("start_sample", "ascending"),
                    ("label", "ascending")],
        DONE: [("run_id", "ascending"), ("commit_seq", "ascending"), ("recording_id", "ascending"),
               ("model_id", "ascending")]}


@dataclass(frozen=True)
class Compacted:
    partitions: int  # partitions rewritten (detection site-months and done sites)
    files_before: int  # live files they held
    rows: int  # rows rewritten (unchanged in number)


def crowded_partitions(dt: DeltaTable | None, min_files: int = 2) -> dict[tuple[str, str, str], list[ResultFile]]:
    """(kind, site, month) -> live detection or done files, for partitions holding at least ``min_files``."""
    groups: dict[tuple[str, str, str], list[ResultFile]] = defaultdict(list)
    for kind in (DETECTION, DONE):
        for f in ResultsTable.files(dt, kind):
            groups[(kind, f.site or "", f.month or "")].append(f)
    return {k: v for k, v in sorted(groups.items()) if len(v) >= min_files}


def _merged(table: ResultsTable, kind: str, files: list[ResultFile]) -> pa.Table:
    schema = DETECTION_FILE if kind == DETECTION else DONE_FILE
    dataset = table.dataset(files, kind)
    if kind == DETECTION:  # the dataset adds the site; the files hold the date
        frame = dataset.to_table(columns=schema.names)
    else:
        frame = dataset.to_table()
    if frame.num_rows:
        frame = frame.sort_by(SORT[kind])
    return frame.select(schema.names).cast(schema)


def compact(table: ResultsTable, min_files: int = 2) -> Compacted:
    """Rewrite every detection partition and every site's done files with at least
    ``min_files`` live files as one file; checkpoint the log when anything was rewritten."""
    done_parts = done_files = done_rows = 0
    while True:
        dt = table.ensure()
        batch = dict(list(crowded_partitions(dt, min_files).items())[:BATCH])
        if not batch:
            break

        def attempt(dt: DeltaTable, batch=batch):
            current = crowded_partitions(dt, min_files)
            work = {k: current[k] for k in batch if k in current}
            if not work:
                return Compacted(0, 0, 0)
            adds, removes, rows = [], [], 0
            try:
                for (kind, site, _month), files in work.items():
                    merged = _merged(table, kind, files)
                    rows += merged.num_rows
                    removes += files
                    if merged.num_rows:
                        adds.append(table.write_file(merged, kind, files[0].site, "compact", data_change=False,
                                                     row_group_size=ROW_GROUP))
            except BaseException:
                table.delete_files(adds)
                raise
            if table.commit(dt, adds, removes, "compact", data_change=False):
                return Compacted(len(work), len(removes), rows)
            return None

        result = table.transact(attempt)
        if result.partitions == 0:
            break
        done_parts += result.partitions
        done_files += result.files_before
        done_rows += result.rows
    if done_parts:
        table.snapshot().create_checkpoint()
    return Compacted(done_parts, done_files, done_rows)


def vacuum(table: ResultsTable, retention_days: float) -> list[str]:
    """Delete files removed from the table more than ``retention_days`` ago; checkpoint the log.
    Returns the files deleted (relative to the table)."""
    dt = table.snapshot()
    if dt is None:
        return []
    deleted = dt.vacuum(retention_hours=max(0, int(round(retention_days * 24))), dry_run=False,
                        enforce_retention_duration=False)
    dt = table.snapshot()
    dt.create_checkpoint()
    return deleted


def history(dt: DeltaTable | None, limit: int | None = None) -> list[dict]:
    """The table's versions, newest first: version, timestamp (ms), operation, and for a commit
    of results its run id, the models (or heads) whose rows it holds, comma-separated, and counts of
    recordings and detection rows (None where not recorded)."""
    if dt is None:
        return []
    out = []
    for entry in dt.history(limit):
        if entry.get("version") is None or entry["version"] < 0:
            continue
        out.append({"version": entry["version"], "timestamp": entry.get("timestamp"),
                    "operation": entry.get("pam.operation") or entry.get("operation"),
                    "run_id": entry.get("pam.run_id"), "models": entry.get("pam.models"),
                    "recordings": _count(entry.get("pam.recordings")),
                    "detections": _count(entry.get("pam.detections"))})
    return out


def _count(text) -> int | None:
    return int(text) if text not in (None, "") else None
