"""The store's similarity indexes (``STORE/index/<model id>/``), kept in step with its embeddings.

``update_index`` brings one embedding model's index (``pam.analysis.similarity``) up to the
store's latest snapshot, incrementally: the index's sidecar, ``sources.parquet``
(``SOURCES_SCHEMA``), lists the live embedding files of the results table it has read, and for
each recording whose windows it holds, the done row they were committed with (run id,
settings hash, commit time). An update reads only the embedding files that are new since
(result files are never changed in place: every commit adds files), so a night's update
reads that night's windows and not the season's. It opens the index to add, which loads only
its open segment into RAM (``pam.analysis.index_segments``: at most ``SEGMENT_VECTORS``
vectors, whatever the season's size), and its commit writes that segment, not the sealed ones.

Rows that left the table leave the index: when files the index read are gone (a
``--force`` rerun, a re-analysed path or re-clocked recordings replace them; a compaction
rewrites them), each recording they held whose done row changed or is gone has all its
windows taken out of the index, before the new files' windows go in (only the segments
holding them are loaded and rewritten). A recording whose done
row is the same (its rows were only moved to another file) keeps its vectors.

The sidecar is written after the index commits. A crash between the two leaves the old
sidecar, and the next update redoes the same work (adding is idempotent, removing an absent
window does nothing). An index without a sidecar (from an older pam) is rebuilt once.
Updates of one index are serialised by a file lock beside the folder.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pam.analysis.similarity import CARD, EXPANSION_SEARCH, SimilarityIndex, SimilarityIndexError
from pam.store.atomic import write_parquet_atomic
from pam.store.embeddings import binary_as_vectors, embedding_files
from pam.store.results import EMBEDDING
from pam.store.store import Store

SOURCES = "sources.parquet"
SOURCES_VERSION = 1
SOURCES_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string(), nullable=False),  # an embedding file of the results table, as its log names it
        pa.field("recording_id", pa.string()),  # a recording whose windows of the model it holds (null: none)
        pa.field("done_key", pa.string()),  # that recording's done row: run id, settings hash, commit time
    ],
    metadata={"index_sources_version": str(SOURCES_VERSION)},
)
DONE_KEY_COLUMNS = ["recording_id", "run_id", "settings_hash", "committed_at"]


class NoEmbeddings(SimilarityIndexError):
    """The store holds no embeddings of the model asked for."""


@dataclass
class IndexUpdate:
    index: SimilarityIndex
    added: int  # windows added
    removed: int  # windows taken out (their recordings were replaced or retired)
    windows_read: int  # embedding rows of the model read from the table
    files_read: int  # embedding files read


def index_folder(store: Store, model_id: str) -> Path:
    return store.root / "index" / re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder.parent / f".{folder.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_sources(folder: Path) -> pd.DataFrame | None:
    """The sidecar of the index in ``folder``; None when there is none."""
    path = folder / SOURCES
    return pq.read_table(path, schema=SOURCES_SCHEMA).to_pandas() if path.is_file() else None


def done_keys(store: Store, model_id: str, recording_ids, snap) -> dict[str, str]:
    """recording id -> its live done row of ``model_id`` as one string (what identifies its embeddings)."""
    ids = sorted(set(recording_ids))
    if not ids:
        return {}
    done = store.done_table(model_id=model_id, recording_ids=ids, columns=DONE_KEY_COLUMNS, snap=snap)
    key = done["run_id"].astype(str) + "/" + done["settings_hash"].astype(str) + "/" + done["committed_at"].astype(str)
    return dict(zip(done["recording_id"], key))


def update_index(store: Store, model_id: str) -> IndexUpdate:
    """Bring ``model_id``'s index up to the store's latest snapshot, reading only new embedding files."""
    folder = index_folder(store, model_id)
    with _locked(folder):
        snap = store.snapshot()
        live = embedding_files(store, snap=snap)
        sources = read_sources(folder)
        has_index = (folder / CARD).exists()
        if has_index and sources is None:  # an index from before the sidecar: rebuild it once
            shutil.rmtree(folder)
            has_index = False
        if not has_index:
            sources = SOURCES_SCHEMA.empty_table().to_pandas()
        index = SimilarityIndex.open(folder) if has_index else None
        if index is not None and index.card.expansion_search < EXPANSION_SEARCH:
            # pam keeps this index: one built under the earlier default (1,024) searches as a new one would
            index.set_expansion_search(EXPANSION_SEARCH)
        live_paths = {f.path for f in live}
        read_before = set(sources["file"])
        gone = read_before - live_paths
        kept = sources[sources["file"].isin(live_paths)]
        removed = 0
        if gone and index is not None:
            held = sources[sources["file"].isin(gone)].dropna(subset=["recording_id"])
            old = dict(zip(held["recording_id"], held["done_key"]))
            now = done_keys(store, model_id, old, snap)
            stale = {r for r, key in old.items() if now.get(r) != key}
            removed = index.remove_recordings(sorted(stale))
            kept = kept[~kept["recording_id"].isin(stale)]
        new_files = [f for f in live if f.path not in read_before]
        pairs, added, windows_read = [], 0, 0
        for f in new_files:
            table = store.results.dataset([f], EMBEDDING).to_table(
                columns=["recording_id", "start_sample", "embedding"], filter=ds.field("model_id") == model_id)
            windows_read += table.num_rows
            if not table.num_rows:
                pairs.append((f.path, None))
                continue
            vectors = binary_as_vectors(table.column("embedding"))
            if index is None:
                index = SimilarityIndex.create(folder, model_id, vectors.shape[1])
            recordings = table.column("recording_id").to_pylist()
            added += index.add(recordings, table.column("start_sample").to_numpy(), vectors, model_id)
            pairs += [(f.path, r) for r in dict.fromkeys(recordings)]
        if index is None:  # nothing of this model in the store yet: nothing to write
            raise NoEmbeddings(f"store {store.root} holds no embeddings of model {model_id}: run `pam detect` "
                               "with detect.embeddings: true")
        index.commit()
        fresh = pd.DataFrame(pairs, columns=["file", "recording_id"])
        keys = done_keys(store, model_id, fresh["recording_id"].dropna(), snap)
        fresh["done_key"] = fresh["recording_id"].map(keys)
        merged = pd.concat([kept, fresh], ignore_index=True) if len(kept) else fresh
        write_parquet_atomic(pa.Table.from_pandas(merged, schema=SOURCES_SCHEMA, preserve_index=False),
                             folder / SOURCES)
        return IndexUpdate(index, added, removed, windows_read, len(new_files))
