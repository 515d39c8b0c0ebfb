"""Reading the ``embeddings`` rows of the results table (docs/store.md#embeddings-version-1):
the live embedding files of one snapshot, pruned by site and UTC date from the log alone,
read file by file (the next file read by a thread while the caller works on this one), and
their vectors as float16 matrices without a Python loop per row: straight from the Parquet
pages for files written plain and uncompressed (``pam.store.embedding_pages``), through
pyarrow for any other file. ``score_embedding_file`` gives a function of a file's vectors (a
head's scores) instead, run on the pages where they lie, without a copy of the vectors.
"""

from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import pam.store.schemas as schemas
from pam.store.embedding_pages import map_vectors, read_vectors
from pam.store.results import EMBEDDING, ResultFile, ResultsTable

KEY_COLUMNS = [n for n in schemas.EMBEDDINGS.names if n != "embedding"]
# string key columns often constant in a file: taken from its footer's statistics when they are
CONSTANT_CANDIDATES = ["recording_id", "model_id", "settings_hash", "run_id", "date"]
# the rows of a read: the embeddings table's other columns, then site (the file's partition) and date
ROWS = pa.schema([f for f in schemas.EMBEDDINGS if f.name != "embedding"] + list(schemas.DETECTION_PARTITIONS))


@dataclass
class Embeddings:
    """Windows (``rows``: the embeddings table's other columns plus site and date) and their
    vectors (float16 [windows, dims]), in the same order."""

    rows: pa.Table
    vectors: np.ndarray

    def __len__(self) -> int:
        return self.rows.num_rows


@dataclass
class Scored:
    """Windows (``rows``, as in ``Embeddings``) and a function of their vectors (``results``,
    float32 [windows, k]: a head's scores), in the same order."""

    rows: pa.Table
    results: np.ndarray

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
    parts = list(iter_embeddings(store, model_id, sites, start, end, recording_ids, snap))
    if not parts:
        return Embeddings(ROWS.empty_table(), np.zeros((0, 0), dtype=np.float16))
    if len({p.vectors.shape[1] for p in parts}) > 1:
        raise ValueError("embeddings of different sizes in one read; read one model at a time")
    if len(parts) == 1:
        return parts[0]
    return Embeddings(pa.concat_tables([p.rows for p in parts]), np.concatenate([p.vectors for p in parts]))


def iter_embeddings(store, model_id: str | None = None, sites: Iterable[str] | None = None,
                    start: date | None = None, end: date | None = None, recording_ids: Iterable[str] | None = None,
                    snap=None, threads: int = 2) -> Iterator[Embeddings]:
    """The committed embeddings of one snapshot file by file, in order (files with no wanted
    window are skipped), read by ``threads`` threads ahead of the caller: for a caller that
    scores each file as it comes, reading and scoring overlap (pyarrow and numpy release the
    GIL), and only a few files' vectors are held at a time."""
    files = embedding_files(store, sites, start, end, snap)
    wanted = None if recording_ids is None else pa.array(list(recording_ids), pa.string())
    for _file, part in read_ahead(lambda f: read_embedding_file(store, f, model_id, wanted), files, threads):
        if part is not None:
            yield part


class ReadAhead:
    """(item, ``read(item)``) for each of ``items`` in order, ``read`` run by ``threads`` threads
    up to ``ahead`` items (default ``threads``) ahead of the caller. Reading starts at once, not
    at the first ``next``, so the caller can prepare meanwhile. ``close`` (also at the end, or
    when a read raises) drops the items not started and waits for the reads in progress."""

    def __init__(self, read: Callable, items: list, threads: int = 2, ahead: int | None = None) -> None:
        threads = max(1, threads)
        self._read, self._following = read, iter(items)
        self._pool = ThreadPoolExecutor(threads)
        self._pending = deque((item, self._pool.submit(read, item))
                              for item in itertools.islice(self._following, max(threads, ahead or 0)))

    def __iter__(self) -> Iterator[tuple]:
        return self

    def __next__(self) -> tuple:
        if not self._pending:
            self.close()
            raise StopIteration
        item, future = self._pending.popleft()
        try:
            result = future.result()
        except BaseException:
            self.close()
            raise
        for nxt in itertools.islice(self._following, 1):
            self._pending.append((nxt, self._pool.submit(self._read, nxt)))
        return item, result

    def close(self) -> None:
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


def read_ahead(read: Callable, items: list, threads: int = 2, ahead: int | None = None) -> ReadAhead:
    """``ReadAhead(read, items, threads, ahead)``: reading starts at the call."""
    return ReadAhead(read, items, threads, ahead)


def read_embedding_file(store, file: ResultFile, model_id: str | None = None,
                        recording_ids: pa.Array | None = None) -> Embeddings | None:
    """One embedding file's windows of ``model_id`` and ``recording_ids`` (all when None) and
    their vectors; None when it has none of them. The vectors are read only when some window is
    wanted, straight from the Parquet pages where the file is written plain
    (``pam.store.embedding_pages``), else through pyarrow."""
    opened = _wanted_rows(store, file, model_id, recording_ids)
    if opened is None:
        return None
    source, parquet, rows, keep = opened
    vectors = read_vectors(source, parquet)
    if vectors is not None:
        vectors = vectors[keep] if keep is not None else vectors
    else:  # not written the plain way (older files, other sizes mixed in): pyarrow decodes it
        vectors = _pyarrow_vectors(parquet, keep)
    return Embeddings(rows.filter(pa.array(keep)) if keep is not None else rows, vectors)


def score_embedding_file(store, file: ResultFile, fn: Callable[[np.ndarray], np.ndarray],
                         model_id: str | None = None, recording_ids: pa.Array | None = None) -> Scored | None:
    """One embedding file's windows of ``model_id`` and ``recording_ids`` (all when None) and
    ``fn`` of their vectors (float16 [n, dims] -> [n, k]); None when it has none of them. Where
    the file is written plain, ``fn`` runs page by page on the vectors where they lie in the
    memory map (``pam.store.embedding_pages.map_vectors``: no copy of them), on every window of
    the file, and the results of the unwanted ones are dropped; else on the wanted vectors as
    pyarrow decodes them."""
    opened = _wanted_rows(store, file, model_id, recording_ids)
    if opened is None:
        return None
    source, parquet, rows, keep = opened
    results = map_vectors(source, parquet, fn)
    if results is not None:
        results = results[keep] if keep is not None else results
    else:
        results = np.asarray(fn(_pyarrow_vectors(parquet, keep)), dtype=np.float32)
    return Scored(rows.filter(pa.array(keep)) if keep is not None else rows, results)


def constant_strings(parquet: pq.ParquetFile, names: list[str]) -> dict[str, str]:
    """The string columns of ``names`` that hold one value in every row of the file, as the
    footer's statistics say (min = max, exact, no nulls, in every row group), with that value:
    they need not be read (a file's rows mostly share their model, settings and run)."""
    meta, schema = parquet.metadata, parquet.schema_arrow
    out = {}
    for name in names:
        index = schema.get_field_index(name)
        values = set()
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(index).statistics
            if (st is None or not st.has_min_max or not st.has_null_count or st.null_count
                    or not getattr(st, "is_min_value_exact", True) or not getattr(st, "is_max_value_exact", True)
                    or not isinstance(st.min, str) or st.min != st.max):
                break
            values.add(st.min)
        else:
            if len(values) == 1:
                out[name] = values.pop()
    return out


def _pyarrow_vectors(parquet: pq.ParquetFile, keep: np.ndarray | None) -> np.ndarray:
    column = parquet.read(columns=["embedding"], use_threads=False).column("embedding")
    return binary_as_vectors(column.filter(pa.array(keep)) if keep is not None else column)


def _wanted_rows(store, file: ResultFile, model_id: str | None, recording_ids: pa.Array | None):
    """(open source, its Parquet footer, the file's rows (``ROWS``), the wanted ones as a bool
    mask or None for all) of one embedding file; None when none is wanted."""
    results = store.results
    path = results.full_path(file.path)
    source = pa.memory_map(path) if results.local else results.fs.open_input_file(path)
    parquet = pq.ParquetFile(source)
    present = set(parquet.schema_arrow.names)
    constant = constant_strings(parquet, [c for c in CONSTANT_CANDIDATES if c in present])
    table = parquet.read(columns=[c for c in KEY_COLUMNS + ["date"] if c in present and c not in constant],
                         use_threads=False)
    n = parquet.metadata.num_rows
    columns = {}
    for field in ROWS:
        if field.name == "site":  # the partition value, from the log; the date is a column of the file
            columns[field.name] = pa.repeat(pa.scalar(file.site, pa.string()), n)
        elif field.name in constant:
            columns[field.name] = pa.repeat(pa.scalar(constant[field.name], field.type), n)
        elif field.name in present:
            columns[field.name] = table.column(field.name).cast(field.type)
        else:
            columns[field.name] = pa.nulls(n, field.type)
    rows = pa.table(columns, schema=ROWS)
    keep = None
    if model_id is not None:
        keep = pc.equal(rows.column("model_id"), model_id)
    if recording_ids is not None:
        cond = pc.is_in(rows.column("recording_id"), value_set=recording_ids)
        keep = cond if keep is None else pc.and_(keep, cond)
    if keep is not None:
        keep = pc.fill_null(keep, False).to_numpy(zero_copy_only=False)
        if not keep.any():
            return None
        if keep.all():
            keep = None
    elif n == 0:
        return None
    return source, parquet, rows, keep
