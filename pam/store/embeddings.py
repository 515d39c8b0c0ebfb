"""Reading the ``embeddings`` rows of the results table (docs/store.md#embeddings-version-1):
the live embedding files of one snapshot, pruned by model, site and UTC date from the log
alone, and their vectors as one float16 matrix without a Python loop per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

import pam.store.schemas as schemas
from pam.store.results import EMBEDDING, ResultFile, ResultsTable

KEY_COLUMNS = [n for n in schemas.EMBEDDINGS.names if n != "embedding"]


@dataclass
class Embeddings:
    """Windows (``rows``: the embeddings table's other columns plus site and date) and their
    vectors (float16 [windows, dims]), in the same order."""

    rows: pa.Table
    vectors: np.ndarray

    def __len__(self) -> int:
        return self.rows.num_rows


def embedding_files(store, sites: Iterable[str] | None = None, start: date | None = None,
                    end: date | None = None, snap=None) -> list[ResultFile]:
    """The live embedding files of one snapshot (of ``store``, a ``pam.store.Store``), pruned by
    site and UTC date; no file is opened."""
    snap = store.snapshot() if snap is None else snap
    return ResultsTable.pruned_files(snap, EMBEDDING, sites, start, end)


def binary_as_vectors(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The embedding column (equal-length float16 byte strings) as a float16 matrix [n, dims]."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        n = len(chunk)
        if n == 0:
            continue
        offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset:chunk.offset + n + 1]
        width = int(offsets[1] - offsets[0])
        if not np.all(np.diff(offsets) == width):
            raise ValueError("embeddings of different sizes in one read; read one model at a time")
        raw = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
        parts.append(raw.view(schemas.EMBEDDING_DTYPE).reshape(n, width // 2))
    if not parts:
        return np.zeros((0, 0), dtype=np.float16)
    if len({p.shape[1] for p in parts}) > 1:
        raise ValueError("embeddings of different sizes in one read; read one model at a time")
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def read_embeddings(store, model_id: str | None = None, sites: Iterable[str] | None = None,
                    start: date | None = None, end: date | None = None, recording_ids: Iterable[str] | None = None,
                    snap=None) -> Embeddings:
    """The committed embeddings of one snapshot (of one model: vectors of one size), filtered
    while reading."""
    files = embedding_files(store, sites, start, end, snap)
    if not files:
        empty = pa.schema(list(schemas.EMBEDDINGS) + list(schemas.DETECTION_PARTITIONS)).empty_table()
        return Embeddings(empty.drop_columns(["embedding"]), np.zeros((0, 0), dtype=np.float16))
    flt = None
    if model_id is not None:
        flt = ds.field("model_id") == model_id
    if recording_ids is not None:
        cond = ds.field("recording_id").isin(pa.array(list(recording_ids), pa.string()))  # typed: [] too
        flt = cond if flt is None else flt & cond
    table = store.results.dataset(files, EMBEDDING).to_table(filter=flt)
    return Embeddings(table.drop_columns(["embedding"]), binary_as_vectors(table.column("embedding")))
