"""The parts of a similarity index folder (``pam.analysis.similarity``): its card, its key files and
its size-capped segments, each one usearch file, searched in turn and merged by similarity.

A segment holds at most the card's ``segment_vectors`` vectors (``SEGMENT_VECTORS`` unless the
index was created with another cap). Only the last segment is *open*: new vectors go there, and
when it is full it is *sealed* and a new one opened. A sealed segment's file is not rewritten by
later additions; only a removal of windows it holds changes it. So an update holds one segment
in RAM (at most ``SEGMENT_VECTORS`` vectors, about 9 GB of bf16 1024-d vectors with the graph at
the default cap), whatever the size of the archive, and a search memory-maps the sealed ones.

Card format versions (``index.json``, key ``version``):

* 1: one vector file (``vector_file``), key files without a segment column;
* 2 (this pam): ``segments``, a list of ``{"file", "vectors"}``, the open one's place in it
  (``open_segment``, null when the last is full or there is none), the cap
  (``segment_vectors``); key files carry the segment each key went to (``segment``).

A format-1 index opens as one segment, numbered 0, its key files' keys all in it; its next commit
writes a format-2 card (its vector file is rewritten then only if it was open and changed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

FORMAT_VERSION = 2
READS = (1, 2)  # card format versions this pam opens
CARD = "index.json"
SEGMENT_VECTORS = 4_000_000  # vectors per segment: about 9 GB in RAM while it is the open one
EXACT_BELOW = 50_000  # vectors; exhaustive search of a segment below this is exact and takes < 20 ms
# HNSW breadth of a search: recall@100 0.952 at 2 million vectors, 131 ms a query on one thread
# (1,024 gave 0.929 there in 16 ms; docs/benchmarks.md, "Similarity search")
EXPANSION_SEARCH = 16_384
DTYPES = ("i8", "bf16", "f16", "f32")
KEYS_SCHEMA = pa.schema(
    [
        pa.field("label", pa.uint64(), nullable=False),  # the usearch label: window_labels() of the key
        pa.field("recording_id", pa.string(), nullable=False),
        pa.field("start_sample", pa.int64(), nullable=False),
        pa.field("segment", pa.int32(), nullable=False),  # the segment the vector went to (format 2)
    ],
    metadata={"index_keys_version": str(FORMAT_VERSION)},
)


class SimilarityIndexError(ValueError):
    """An index folder, or an addition to it, that cannot be used; the message says what to do."""


def empty_keys() -> pd.DataFrame:
    return KEYS_SCHEMA.empty_table().to_pandas()


def read_key_file(path: Path) -> pd.DataFrame:
    """A key file as a frame of ``KEYS_SCHEMA``; a format-1 file (no ``segment``) has every key in segment 0."""
    table = pq.read_table(path)
    if "segment" not in table.column_names:
        table = table.append_column("segment", pa.array(np.zeros(table.num_rows, np.int32)))
    return table.select(KEYS_SCHEMA.names).cast(KEYS_SCHEMA).to_pandas()


@dataclass(frozen=True)
class IndexCard:
    model_id: str
    dim: int
    dtype: str = "bf16"
    connectivity: int = 16
    expansion_add: int = 64
    expansion_search: int = EXPANSION_SEARCH
    count: int = 0
    generation: int = 0
    segments: tuple[tuple[str, int], ...] = ()  # (file, vectors), in order
    open_segment: int | None = None  # the segment new vectors go to; None: open a new one first
    segment_vectors: int = SEGMENT_VECTORS
    key_files: tuple[str, ...] = ()
    version: int = FORMAT_VERSION

    def to_json(self) -> str:
        d = dict(self.__dict__)
        d["key_files"] = list(self.key_files)
        d["segments"] = [{"file": f, "vectors": n} for f, n in self.segments]
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def read(cls, folder: Path) -> "IndexCard":
        path = folder / CARD
        if not path.is_file():
            raise SimilarityIndexError(f"{folder}: no similarity index here ({CARD} missing); build one first")
        d = json.loads(path.read_text())
        if d.get("version") not in READS:
            raise SimilarityIndexError(f"{path}: index format {d.get('version')}, this pam reads "
                                       f"{', '.join(map(str, READS))}: rebuild the index")
        if d["version"] == 1:  # one vector file: segment 0, open while it has room
            file = d.pop("vector_file")
            d["segments"] = [{"file": file, "vectors": d["count"]}] if file else []
            d["segment_vectors"] = SEGMENT_VECTORS
            d["open_segment"] = 0 if file and d["count"] < SEGMENT_VECTORS else None
            d["version"] = FORMAT_VERSION
        d["key_files"] = tuple(d["key_files"])
        d["segments"] = tuple((s["file"], int(s["vectors"])) for s in d["segments"])
        return cls(**d)


def new_usearch(card: IndexCard):
    from usearch.index import Index

    return Index(ndim=card.dim, metric="cos", dtype=card.dtype, connectivity=card.connectivity,
                 expansion_add=card.expansion_add, expansion_search=card.expansion_search)


def load_usearch(path: Path, card: IndexCard, view: bool):
    """The usearch index in ``path``: read into RAM (``view=False``), or memory-mapped read-only."""
    index = new_usearch(card)
    if view:
        index.view(str(path))
    else:
        index.load(str(path))
    return index


@dataclass
class Segment:
    """One segment of an index: its file (None until first written), its vector count, and its
    usearch index once needed: ``loaded`` (in RAM, changeable) or memory-mapped."""

    file: str | None
    count: int
    index: object = None
    loaded: bool = False
    dirty: bool = False  # changed since its file was written

    def _check(self, folder: Path) -> None:
        if len(self.index) != self.count:
            raise SimilarityIndexError(f"{folder}: the card says {self.count} vectors in {self.file} but it holds "
                                       f"{len(self.index)}: rebuild the index")

    def in_ram(self, folder: Path, card: IndexCard):
        """The segment's index loaded for changing (read from its file the first time)."""
        if not self.loaded:
            self.index = load_usearch(folder / self.file, card, view=False) if self.file else new_usearch(card)
            self.loaded = True
            self._check(folder)
        return self.index

    def searchable(self, folder: Path, card: IndexCard):
        """The segment's index for searching: the one in RAM, or its file memory-mapped."""
        if self.index is None:
            self.index = load_usearch(folder / self.file, card, view=True)
            self._check(folder)
        return self.index

    def write(self, folder: Path, name: str) -> None:
        """Save the (loaded) segment as ``name`` through a temporary file and a rename."""
        tmp = folder / f".{name}.tmp"
        self.index.save(str(tmp))
        tmp.replace(folder / name)
        self.file, self.dirty = name, False

    def release(self) -> None:
        """Drop the index from RAM (a sealed, written segment); the next search memory-maps its file."""
        if self.loaded and not self.dirty:
            self.index, self.loaded = None, False


def segment_file(number: int, generation: int) -> str:
    return f"vectors-s{number:06d}-g{generation:06d}.usearch"


def search_segments(segments: list[Segment], folder: Path, card: IndexCard, query: np.ndarray, k: int,
                    exact: bool | None) -> tuple[np.ndarray, np.ndarray]:
    """Labels and cosine similarities of the ``k`` vectors nearest to ``query`` (one unit row) over all
    segments, most similar first: each segment's own top ``k`` (exhaustive below ``EXACT_BELOW``
    vectors when ``exact`` is None), merged."""
    labels, similarity = [np.empty(0, np.uint64)], [np.empty(0, np.float32)]
    for seg in segments:
        if seg.count == 0:
            continue
        index = seg.searchable(folder, card)
        index.expansion_search = max(card.expansion_search, k)
        found = index.search(query, min(k, seg.count), exact=(seg.count < EXACT_BELOW) if exact is None else exact)
        labels.append(np.asarray(found.keys, dtype=np.uint64).reshape(-1))
        similarity.append((1.0 - np.asarray(found.distances, dtype=np.float32)).reshape(-1))
    labels, similarity = np.concatenate(labels), np.concatenate(similarity)
    order = np.argsort(-similarity, kind="stable")[:k]
    return labels[order], similarity[order]
