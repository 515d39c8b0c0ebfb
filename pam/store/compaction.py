"""Compaction and retention of the ``results`` table (docs/store.md#compaction-and-retention).

Every flush writes one detection file per site and UTC day it touched, so a night's run
leaves many small files in the partitions it wrote. ``compact`` rewrites each detection
partition that holds more than one live file as one file, rows sorted by time, in
transactions that change no row (``dataChange: false``): readers of any version see the same
rows, and a commit racing a compaction is retried like any other (the compaction rereads and
starts the conflicting batch over). Done files are left as they are: their names carry the
run and commit number (``Store.next_seq``), and incremental summaries follow them.

``vacuum`` deletes the files that versions older than the retention removed (compacted,
replaced or retired files), so time travel reaches back as far as the retention and no
further; then it writes a checkpoint of the log.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pyarrow as pa
from deltalake import DeltaTable

from pam.store.results import DETECTION, DETECTION_FILE, ResultFile, ResultsTable

# Partitions compacted per transaction: a batch that loses a race is rewritten, not the whole run.
BATCH = 64


@dataclass(frozen=True)
class Compacted:
    partitions: int  # partitions rewritten
    files_before: int  # live detection files they held
    rows: int  # rows rewritten (unchanged in number)


def crowded_partitions(dt: DeltaTable | None, min_files: int = 2) -> dict[tuple[str, str], list[ResultFile]]:
    """(site, date) -> live detection files, for partitions holding at least ``min_files``."""
    groups: dict[tuple[str, str], list[ResultFile]] = defaultdict(list)
    for f in ResultsTable.files(dt, DETECTION):
        groups[(f.site, f.date)].append(f)
    return {k: v for k, v in sorted(groups.items()) if len(v) >= min_files}


def _merged(table: ResultsTable, files: list[ResultFile]) -> pa.Table:
    frame = table.dataset(files, DETECTION).to_table(columns=DETECTION_FILE.names)
    if frame.num_rows:
        frame = frame.sort_by([("start_time", "ascending"), ("recording_id", "ascending"),
                               ("start_sample", "ascending"), ("label", "ascending")])
    return frame.cast(DETECTION_FILE)


def compact(table: ResultsTable, min_files: int = 2) -> Compacted:
    """Rewrite every detection partition with at least ``min_files`` live files as one file."""
    done_parts = done_files = done_rows = 0
    while True:
        dt = table.ensure()
        batch = dict(list(crowded_partitions(dt, min_files).items())[:BATCH])
        if not batch:
            return Compacted(done_parts, done_files, done_rows)

        def attempt(dt: DeltaTable, batch=batch):
            current = crowded_partitions(dt, min_files)
            work = {k: current[k] for k in batch if k in current}
            if not work:
                return Compacted(0, 0, 0)
            adds, removes, rows = [], [], 0
            try:
                for (site, day), files in work.items():
                    merged = _merged(table, files)
                    rows += merged.num_rows
                    removes += files
                    if merged.num_rows:
                        adds.append(table.write_file(merged, DETECTION, site, day, "compact", data_change=False))
            except BaseException:
                table.delete_files(adds)
                raise
            if table.commit(dt, adds, removes, "compact", data_change=False):
                return Compacted(len(work), len(removes), rows)
            return None

        result = table.transact(attempt)
        if result.partitions == 0:
            return Compacted(done_parts, done_files, done_rows)
        done_parts += result.partitions
        done_files += result.files_before
        done_rows += result.rows


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
