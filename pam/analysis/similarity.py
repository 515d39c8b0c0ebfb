"""An on-disk nearest-neighbour index of window embeddings, searched by cosine similarity.

One index folder holds the embeddings of one embedding model (they share a length and a
meaning); each vector is keyed by the window it describes, (recording id, start sample,
model id). The approximate search is usearch's HNSW graph (chosen by measurement:
docs/benchmarks.md, "Similarity search"); below ``EXACT_BELOW`` vectors the index is searched
exhaustively instead, which is exact and still fast.

Files in the folder:

* ``index.json``: the card (format version, model id, vector length, stored dtype, HNSW
  settings, number of vectors, the vector file and the key files in force);
* ``vectors-NNNNNN.usearch``: the usearch index, labels are 64-bit hashes of the keys;
* ``keys-NNNNNN.parquet``: one file per commit, the keys it added (``KEYS_SCHEMA``); a commit
  that removed windows (``remove_recordings``) writes every key instead, and starts the list.

A commit writes the new key file and a new vector file, then replaces ``index.json`` in one
rename; a crash before the rename leaves the previous index intact (stray files are removed by
the next commit). Adding a key that the index already holds does nothing, so a nightly update
can re-add a whole night safely.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

FORMAT_VERSION = 1
CARD = "index.json"
EXACT_BELOW = 50_000  # vectors; exhaustive search below this is exact and takes < 20 ms
# HNSW breadth of a search: recall@100 0.952 at 2 million vectors, 131 ms a query on one thread
# (1,024 gave 0.929 there in 16 ms; docs/benchmarks.md, "Similarity search")
EXPANSION_SEARCH = 16_384
DTYPES = ("i8", "bf16", "f16", "f32")
KEYS_SCHEMA = pa.schema(
    [
        pa.field("label", pa.uint64(), nullable=False),  # the usearch label: window_labels() of the key
        pa.field("recording_id", pa.string(), nullable=False),
        pa.field("start_sample", pa.int64(), nullable=False),
    ],
    metadata={"index_keys_version": str(FORMAT_VERSION)},
)


class SimilarityIndexError(ValueError):
    """An index folder, or an addition to it, that cannot be used; the message says what to do."""


def window_labels(recording_ids: Sequence[str], start_samples: Sequence[int], model_id: str) -> np.ndarray:
    """64-bit labels of window keys: the first 8 bytes of blake2b(recording id, start sample, model id)."""
    out = np.empty(len(recording_ids), dtype=np.uint64)
    for i, (rec, start) in enumerate(zip(recording_ids, start_samples)):
        digest = hashlib.blake2b(f"{rec}\x00{int(start)}\x00{model_id}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little")
    return out


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to length 1 (all-zero rows stay zero)."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None, :]
    if not np.isfinite(v).all():
        raise SimilarityIndexError("embeddings hold NaN or infinite values: recompute them")
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norm > 0, norm, 1.0)


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
    vector_file: str | None = None
    key_files: tuple[str, ...] = ()
    version: int = FORMAT_VERSION

    def to_json(self) -> str:
        d = dict(self.__dict__)
        d["key_files"] = list(self.key_files)
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def read(cls, folder: Path) -> "IndexCard":
        path = folder / CARD
        if not path.is_file():
            raise SimilarityIndexError(f"{folder}: no similarity index here ({CARD} missing); build one first")
        d = json.loads(path.read_text())
        if d.get("version") != FORMAT_VERSION:
            raise SimilarityIndexError(f"{path}: index format {d.get('version')}, this pam reads "
                                       f"{FORMAT_VERSION}: rebuild the index")
        d["key_files"] = tuple(d["key_files"])
        return cls(**d)


class SimilarityIndex:
    """Create with ``create``, load with ``open``; ``add`` (or ``remove_recordings``) then ``commit``;
    ``search`` any time."""

    def __init__(self, folder: Path, card: IndexCard, index, keys: pd.DataFrame, view: bool):
        self.folder, self.card, self._index, self._view = folder, card, index, view
        self._keys = keys  # label, recording_id, start_sample; sorted by label
        self._pending: list[pd.DataFrame] = []
        self._removed = False  # remove() took windows out since the last commit

    # ------------------------------------------------------------------ open / create

    @classmethod
    def create(cls, folder: str | os.PathLike, model_id: str, dim: int, dtype: str = "bf16",
               connectivity: int = 16, expansion_add: int = 64,
               expansion_search: int = EXPANSION_SEARCH) -> "SimilarityIndex":
        """A new empty index in ``folder`` (which must not hold one already)."""
        folder = Path(folder)
        if (folder / CARD).exists():
            raise SimilarityIndexError(f"{folder} already holds a similarity index: open it, or remove the folder")
        if dtype not in DTYPES:
            raise SimilarityIndexError(f"unknown index dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        if dim <= 0:
            raise SimilarityIndexError(f"embedding length must be positive, got {dim}")
        folder.mkdir(parents=True, exist_ok=True)
        card = IndexCard(model_id=model_id, dim=int(dim), dtype=dtype, connectivity=connectivity,
                         expansion_add=expansion_add, expansion_search=expansion_search)
        return cls(folder, card, cls._new_usearch(card), cls._empty_keys(), view=False)

    @classmethod
    def open(cls, folder: str | os.PathLike, view: bool = False) -> "SimilarityIndex":
        """The committed index in ``folder``; ``view=True`` memory-maps the vectors (read-only, little RAM)."""
        folder = Path(folder)
        card = IndexCard.read(folder)
        index = cls._new_usearch(card)
        if card.vector_file:
            path = str(folder / card.vector_file)
            if view:
                index.view(path)
            else:
                index.load(path)
        parts = [pq.read_table(folder / f, schema=KEYS_SCHEMA).to_pandas() for f in card.key_files]
        keys = pd.concat(parts, ignore_index=True) if parts else cls._empty_keys()
        if len(keys) != card.count or len(index) != card.count:
            raise SimilarityIndexError(f"{folder}: the card says {card.count} vectors but the files hold "
                                       f"{len(index)} vectors and {len(keys)} keys: rebuild the index")
        return cls(folder, card, index, keys.sort_values("label", ignore_index=True), view)

    @staticmethod
    def _new_usearch(card: IndexCard):
        from usearch.index import Index

        return Index(ndim=card.dim, metric="cos", dtype=card.dtype, connectivity=card.connectivity,
                     expansion_add=card.expansion_add, expansion_search=card.expansion_search)

    @staticmethod
    def _empty_keys() -> pd.DataFrame:
        return KEYS_SCHEMA.empty_table().to_pandas()

    def __len__(self) -> int:
        return len(self._index)

    @property
    def model_id(self) -> str:
        return self.card.model_id

    # ------------------------------------------------------------------ add / commit

    def add(self, recording_ids: Sequence[str], start_samples: Sequence[int], vectors: np.ndarray,
            model_id: str) -> int:
        """Add windows not yet in the index; returns how many were new. Call ``commit`` to keep them."""
        if self._view:
            raise SimilarityIndexError(f"{self.folder}: opened as a read-only view; open it with view=False to add")
        if model_id != self.card.model_id:
            raise SimilarityIndexError(f"{self.folder} indexes embeddings of model {self.card.model_id}, "
                                       f"not {model_id}: use one index folder per embedding model")
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.card.dim:
            raise SimilarityIndexError(f"{self.folder}: vectors of shape {vectors.shape}, the index holds "
                                       f"{self.card.dim}-d embeddings of model {model_id}")
        if not len(recording_ids) == len(start_samples) == len(vectors):
            raise SimilarityIndexError(f"{len(recording_ids)} recording ids, {len(start_samples)} start samples "
                                       f"and {len(vectors)} vectors: give one of each per window")
        keys = pd.DataFrame({"label": window_labels(recording_ids, start_samples, model_id),
                             "recording_id": pd.Series(recording_ids, dtype=object).astype(str),
                             "start_sample": np.asarray(start_samples, dtype=np.int64)})
        distinct = keys.drop_duplicates(["label", "recording_id", "start_sample"])
        if distinct["label"].duplicated().any():
            self._check_collisions(distinct[distinct["label"].duplicated(keep=False)], within=distinct)
        first = ~keys["label"].duplicated().to_numpy()
        held = np.asarray(self._index.contains(keys["label"].to_numpy()), dtype=bool).reshape(-1)
        if held.any():
            self._check_collisions(keys[held])
        new = first & ~held
        if not new.any():
            return 0
        keys = keys[new].reset_index(drop=True)
        self._index.add(keys["label"].to_numpy(), unit_rows(vectors[new]), threads=0)
        self._pending.append(keys)
        return int(new.sum())

    def remove_recordings(self, recording_ids: Sequence[str]) -> int:
        """Take every window of these recordings out of the index (committed ones and ones added
        since); returns how many. Call ``commit`` to keep the removal."""
        if self._view:
            raise SimilarityIndexError(f"{self.folder}: opened as a read-only view; open it with view=False to remove")
        ids = set(map(str, recording_ids))
        if not ids:
            return 0
        gone = 0
        pending = []
        for keys in [self._keys, *self._pending]:
            hit = keys["recording_id"].isin(ids).to_numpy()
            if hit.any():
                self._index.remove(keys["label"].to_numpy()[hit])
                gone += int(hit.sum())
            pending.append(keys[~hit].reset_index(drop=True) if hit.any() else keys)
        self._keys, self._pending = pending[0], [p for p in pending[1:] if len(p)]
        self._removed = self._removed or gone > 0
        return gone

    def _check_collisions(self, keys: pd.DataFrame, within: pd.DataFrame | None = None) -> None:
        known = within if within is not None else (
            pd.concat([self._keys, *self._pending]) if self._pending else self._keys)
        merged = keys.merge(known, on="label", suffixes=("", "_held"))
        clash = merged[(merged["recording_id"] != merged["recording_id_held"])
                       | (merged["start_sample"] != merged["start_sample_held"])]
        if len(clash):
            row = clash.iloc[0]
            raise SimilarityIndexError(
                f"{self.folder}: window ({row.recording_id}, {row.start_sample}) has the same 64-bit label as "
                f"({row.recording_id_held}, {row.start_sample_held}); report this, it should not happen")

    def commit(self) -> None:
        """Write what ``add`` staged and ``remove_recordings`` took out: key file, vector file, then
        the card in one rename. After a removal the key file holds every key, and it alone is in force."""
        if not self._pending and not self._removed:
            if self.card.generation == 0:  # an empty index still gets its card
                self._write_card(self.card)
            return
        gen = self.card.generation + 1
        added = pd.concat(self._pending, ignore_index=True) if self._pending else self._empty_keys()
        key_file = f"keys-{gen:06d}.parquet"
        vector_file = f"vectors-{gen:06d}.usearch"
        everything = pd.concat([self._keys, added], ignore_index=True)
        tmp = self.folder / f".{key_file}.tmp"
        written = everything if self._removed else added
        pq.write_table(pa.Table.from_pandas(written, schema=KEYS_SCHEMA, preserve_index=False), tmp)
        os.replace(tmp, self.folder / key_file)
        tmp = self.folder / f".{vector_file}.tmp"
        self._index.save(str(tmp))
        os.replace(tmp, self.folder / vector_file)
        key_files = (key_file,) if self._removed else (*self.card.key_files, key_file)
        card = IndexCard(**{**self.card.__dict__, "count": len(self._index), "generation": gen,
                            "vector_file": vector_file, "key_files": key_files})
        self._write_card(card)
        self.card = card
        self._keys = everything.sort_values("label", ignore_index=True)
        self._pending = []
        self._removed = False
        self._remove_stray_files()

    def set_expansion_search(self, expansion_search: int) -> None:
        """Search with this breadth from now on; written to the card at once (the vectors stay)."""
        if self._view:
            raise SimilarityIndexError(f"{self.folder}: opened as a read-only view; open it with view=False to change it")
        self.card = IndexCard(**{**self.card.__dict__, "expansion_search": int(expansion_search)})
        self._index.expansion_search = int(expansion_search)
        if self.card.generation:
            self._write_card(self.card)

    def _write_card(self, card: IndexCard) -> None:
        tmp = self.folder / f".{CARD}.tmp"
        tmp.write_text(card.to_json())
        os.replace(tmp, self.folder / CARD)

    def _remove_stray_files(self) -> None:
        keep = {CARD, self.card.vector_file, *self.card.key_files}
        for f in self.folder.iterdir():
            ours = f.name.startswith(("vectors-", "keys-", ".vectors-", ".keys-", f".{CARD}"))
            if f.name not in keep and ours and f.is_file():
                f.unlink()

    # ------------------------------------------------------------------ search

    def search(self, vector: np.ndarray, k: int = 100, exact: bool | None = None) -> pd.DataFrame:
        """The ``k`` windows most similar to ``vector``, most similar first.

        Columns: recording_id, start_sample, model_id, similarity (cosine, 1 = same direction).
        ``exact=None`` searches exhaustively below ``EXACT_BELOW`` vectors and by the graph above.
        """
        q = unit_rows(vector)
        if q.shape != (1, self.card.dim):
            raise SimilarityIndexError(f"query of shape {np.shape(vector)}, the index holds {self.card.dim}-d "
                                       f"embeddings of model {self.card.model_id}")
        if self._pending:
            raise SimilarityIndexError(f"{self.folder}: commit the added windows before searching")
        if len(self._index) == 0:
            return self._result(np.empty(0, np.uint64), np.empty(0, np.float32))
        if exact is None:
            exact = len(self._index) < EXACT_BELOW
        self._index.expansion_search = max(self.card.expansion_search, k)
        found = self._index.search(q[0], min(k, len(self._index)), exact=exact)
        return self._result(np.asarray(found.keys, dtype=np.uint64), 1.0 - np.asarray(found.distances))

    def _result(self, labels: np.ndarray, similarity: np.ndarray) -> pd.DataFrame:
        at = np.searchsorted(self._keys["label"].to_numpy(), labels)
        rows = self._keys.iloc[at]
        return pd.DataFrame({"recording_id": rows["recording_id"].to_numpy(),
                             "start_sample": rows["start_sample"].to_numpy(),
                             "model_id": self.card.model_id,
                             "similarity": similarity.astype(np.float32)})


def build_index(folder: str | os.PathLike, batches: Iterable[tuple[Sequence[str], Sequence[int], np.ndarray]],
                model_id: str, dim: int | None = None, **settings) -> SimilarityIndex:
    """Open the index in ``folder`` (or create it), add every (recording ids, start samples, vectors)
    batch, and commit once. Windows already indexed are skipped: rerunning is safe."""
    folder = Path(folder)
    index: SimilarityIndex | None = SimilarityIndex.open(folder) if (folder / CARD).exists() else None
    for recording_ids, start_samples, vectors in batches:
        if index is None:
            index = SimilarityIndex.create(folder, model_id, dim or np.shape(vectors)[1], **settings)
        index.add(recording_ids, start_samples, vectors, model_id)
    if index is None:
        if dim is None:
            raise SimilarityIndexError(f"{folder}: no embeddings to index and no length given")
        index = SimilarityIndex.create(folder, model_id, dim, **settings)
    index.commit()
    return index
