"""Whole-file writes for the store's plain files (summaries, reports, CSVs, state).

Every file is written to a hidden temporary name in its own folder, ``.<name>.<8 hex>.tmp``
(``TMP_NAME``), fsynced, renamed into place, and the folder fsynced: readers see the old file
or the new one, never a part. A process killed half-way leaves only a name that matches
``TMP_NAME``, which ``Store.recover`` removes. Use these helpers for every such write, so that
there is one pattern to clean up (issue 12, defect 6).
"""

from __future__ import annotations

import builtins
import os
import re
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"


def _write_atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with builtins.open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def write_bytes_atomic(data: bytes, path: Path) -> None:
    _write_atomic(path, lambda fh: fh.write(data))


def write_text_atomic(text: str, path: Path) -> None:
    _write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write so that readers see either nothing or the whole file, never a partial one."""
    _write_atomic(path, lambda fh: pq.write_table(table, fh, compression="zstd"))
