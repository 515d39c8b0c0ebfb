"""Write a store in the folder layout of pam before issue 12 (as on main before the results table),
file for file as its ``Store.commit`` wrote it: the input of ``pam store migrate``.

    detections/site=<percent-encoded site>/date=<UTC day>/part-<run>-<seq:05d>.parquet
    done/done-<run>-<seq:05d>.parquet
    .replace-<run>-<seq:05d>.json        rows a --force commit replaces, until removed
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq

import pam.store.schemas as schemas
from pam.store.store import Flush


def partition_dir(site: str | None, day: str | None) -> str:
    site = site if isinstance(site, str) and site else "unknown"
    day = day if isinstance(day, str) and day else "unknown"
    return f"site={quote(site, safe='')}/date={day}"


def write_parts(root: Path, run: str, seq: int, detections: pa.Table) -> list[Path]:
    out = []
    frame = detections.to_pandas()
    for (site, day), group in frame.groupby(["site", "date"], sort=True, dropna=False):
        part = pa.Table.from_pandas(group.drop(columns=["site", "date"]), schema=schemas.with_version("detections"),
                                    preserve_index=False)
        path = root / "detections" / partition_dir(site, day) / f"part-{run}-{seq:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(part, path)
        out.append(path)
    return out


def write_flush(root: Path, run: str, seq: int, flush: Flush) -> None:
    """A committed flush: its parts, then its done file."""
    write_parts(root, run, seq, flush.detections)
    (root / "done").mkdir(parents=True, exist_ok=True)
    pq.write_table(flush.done.cast(schemas.with_version("done")), root / "done" / f"done-{run}-{seq:05d}.parquet")


def write_replace_journal(root: Path, run: str, seq: int, keys: list[tuple[str, str, str, str]]) -> None:
    """A --force commit cut after its done file, before its journal was applied."""
    (root / f".replace-{run}-{seq:05d}.json").write_text(json.dumps({"keys": [list(k) for k in keys]}))
