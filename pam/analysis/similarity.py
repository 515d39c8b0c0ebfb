"""An on-disk nearest-neighbour index of window embeddings, searched by cosine similarity.

One index folder holds the embeddings of one embedding model (they share a length and a
meaning); each vector is keyed by the window it describes, (recording id, start sample,
model id). The approximate search is usearch's HNSW graph (chosen by measurement:
docs/benchmarks.md, "Similarity search"); a segment of fewer than ``EXACT_BELOW`` vectors is
searched exhaustively instead, which is exact and still fast.

The vectors are kept in size-capped segments (``pam.analysis.index_segments``): each its own
usearch file of at most ``SEGMENT_VECTORS`` vectors. New vectors go to the open (last) segment;
a full one is sealed and a new one opened. Opening the index to add loads only the open segment
into RAM; a search memory-maps the sealed ones, searches each and merges their top ``k`` by
similarity. ``remove_recordings`` loads and changes only the segments holding those windows
(the key files record each key's segment).

Files in the folder:

* ``index.json``: the card (format version, model id, vector length, stored dtype, HNSW
  settings, number of vectors, the segments with their vector counts and which is open, the
  segment cap, and the key files in force);
* ``vectors-sSSSSSS-gNNNNNN.usearch``: segment SSSSSS as commit NNNNNN wrote it; labels are
  64-bit hashes of the keys (an index of format 1 has one ``vectors-NNNNNN.usearch``: segment 0);
* ``keys-NNNNNN.parquet``: one file per commit, the keys it added and their segment
  (``KEYS_SCHEMA``); a commit that removed windows writes every key instead, and starts the list.

A commit writes the segments that changed (normally only the open one; a segment sealed while
adding is written when it fills, so a long build holds one segment in RAM), the new key file,
then replaces ``index.json`` in one rename; a crash before the rename leaves the previous index
intact (stray files are removed by the next commit). Adding a key that the index already holds
(in any segment: the key files know it) does nothing, so a nightly update can re-add a whole
night safely.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pam.analysis.index_segments import (
    CARD,
    DTYPES,
    EXACT_BELOW,
    EXPANSION_SEARCH,
    FORMAT_VERSION,
    KEYS_SCHEMA,
    SEGMENT_VECTORS,
    IndexCard,
    Segment,
    SimilarityIndexError,
    empty_keys,
    new_usearch,
    read_key_file,
    search_segments,
    segment_file,
)

__all__ = ["CARD", "EXACT_BELOW", "EXPANSION_SEARCH", "FORMAT_VERSION", "KEYS_SCHEMA", "SEGMENT_VECTORS",
           "IndexCard", "SimilarityIndex", "SimilarityIndexError", "build_index", "unit_rows", "window_labels"]


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


class SimilarityIndex:
    """Create with ``create``, load with ``open``; ``add`` (or ``remove_recordings``) then ``commit``;
    ``search`` any time."""

    def __init__(self, folder: Path, card: IndexCard, segments: list[Segment], keys: pd.DataFrame, view: bool):
        self.folder, self.card, self._segments, self._view = folder, card, segments, view
        self._open = card.open_segment  # the segment new vectors go to (None: open a new one first)
        self._keys = keys  # label, recording_id, start_sample, segment; sorted by label
        self._pending: list[pd.DataFrame] = []
        self._removed = False  # remove() took windows out since the last commit

    # ------------------------------------------------------------------ open / create

    @classmethod
    def create(cls, folder: str | os.PathLike, model_id: str, dim: int, dtype: str = "bf16",
               connectivity: int = 16, expansion_add: int = 64, expansion_search: int = EXPANSION_SEARCH,
               segment_vectors: int | None = None) -> "SimilarityIndex":
        """A new empty index in ``folder`` (which must not hold one already), its segments capped at
        ``segment_vectors`` vectors (default ``SEGMENT_VECTORS``)."""
        folder = Path(folder)
        segment_vectors = SEGMENT_VECTORS if segment_vectors is None else segment_vectors
        if (folder / CARD).exists():
            raise SimilarityIndexError(f"{folder} already holds a similarity index: open it, or remove the folder")
        if dtype not in DTYPES:
            raise SimilarityIndexError(f"unknown index dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        if dim <= 0:
            raise SimilarityIndexError(f"embedding length must be positive, got {dim}")
        if segment_vectors <= 0:
            raise SimilarityIndexError(f"segment size must be positive, got {segment_vectors}")
        folder.mkdir(parents=True, exist_ok=True)
        card = IndexCard(model_id=model_id, dim=int(dim), dtype=dtype, connectivity=connectivity,
                         expansion_add=expansion_add, expansion_search=expansion_search,
                         segment_vectors=int(segment_vectors))
        return cls(folder, card, [], empty_keys(), view=False)

    @classmethod
    def open(cls, folder: str | os.PathLike, view: bool = False) -> "SimilarityIndex":
        """The committed index in ``folder``. ``view=False`` (to add or remove) loads the open segment
        into RAM and no other; ``view=True`` is read-only. Sealed segments are memory-mapped when searched."""
        folder = Path(folder)
        card = IndexCard.read(folder)
        segments = [Segment(file, count) for file, count in card.segments]
        parts = [read_key_file(folder / f) for f in card.key_files]
        keys = pd.concat(parts, ignore_index=True) if parts else empty_keys()
        per_segment = np.bincount(keys["segment"].to_numpy(), minlength=len(segments)) if len(keys) else \
            np.zeros(len(segments), np.int64)
        if len(per_segment) != len(segments) or list(per_segment) != [s.count for s in segments] \
                or len(keys) != card.count:
            raise SimilarityIndexError(f"{folder}: the card says {card.count} vectors in segments of "
                                       f"{[s.count for s in segments]} but its key files hold {len(keys)} keys in "
                                       f"{list(per_segment)}: rebuild the index")
        if card.open_segment is not None and not view:
            segments[card.open_segment].in_ram(folder, card)
        return cls(folder, card, segments, keys.sort_values("label", ignore_index=True), view)

    def __len__(self) -> int:
        return sum(s.count for s in self._segments)

    @property
    def model_id(self) -> str:
        return self.card.model_id

    @property
    def segment_counts(self) -> list[int]:
        """Vectors per segment, in order (staged additions included)."""
        return [s.count for s in self._segments]

    # ------------------------------------------------------------------ add / commit

    def _writable(self, what: str) -> None:
        if self._view:
            raise SimilarityIndexError(f"{self.folder}: opened as a read-only view; open it with view=False to {what}")

    def add(self, recording_ids: Sequence[str], start_samples: Sequence[int], vectors: np.ndarray,
            model_id: str) -> int:
        """Add windows not yet in the index; returns how many were new. Call ``commit`` to keep them."""
        self._writable("add")
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
        held = self._held(keys["label"].to_numpy())
        if held.any():
            self._check_collisions(keys[held])
        new = np.flatnonzero(first & ~held)
        if not len(new):
            return 0
        keys = keys.iloc[new].reset_index(drop=True)
        rows = unit_rows(vectors[new])
        done = 0
        while done < len(rows):  # fill the open segment, seal it when full, go on in a new one
            number, seg = self._open_segment()
            take = min(len(rows) - done, self.card.segment_vectors - seg.count)
            part = keys.iloc[done:done + take].assign(segment=np.int32(number))
            seg.in_ram(self.folder, self.card).add(part["label"].to_numpy(), rows[done:done + take], threads=0)
            seg.count, seg.dirty = seg.count + take, True
            self._pending.append(part)
            done += take
        return len(rows)

    def _held(self, labels: np.ndarray) -> np.ndarray:
        """Which labels the index holds already, committed or staged (in any segment)."""
        known = self._keys["label"].to_numpy()
        at = np.minimum(np.searchsorted(known, labels), max(len(known) - 1, 0))
        held = (known[at] == labels) if len(known) else np.zeros(len(labels), bool)
        if self._pending:
            held |= np.isin(labels, np.concatenate([p["label"].to_numpy() for p in self._pending]))
        return held

    def _open_segment(self) -> tuple[int, Segment]:
        """The open segment with room, sealing a full one (written now, then dropped from RAM) first."""
        if self._open_is_full():
            seg = self._segments[self._open]
            if seg.dirty:
                seg.write(self.folder, segment_file(self._open, self.card.generation + 1))
            seg.release()
            self._open = None
        if self._open is None:
            self._segments.append(Segment(None, 0, new_usearch(self.card), loaded=True))
            self._open = len(self._segments) - 1
        return self._open, self._segments[self._open]

    def _open_is_full(self) -> bool:
        return self._open is not None and self._segments[self._open].count >= self.card.segment_vectors

    def remove_recordings(self, recording_ids: Sequence[str]) -> int:
        """Take every window of these recordings out of the index (committed ones and ones added
        since); loads only the segments that hold them. Returns how many. Call ``commit`` to keep
        the removal."""
        self._writable("remove")
        ids = set(map(str, recording_ids))
        if not ids:
            return 0
        gone = 0
        kept = []
        for keys in [self._keys, *self._pending]:
            hit = keys["recording_id"].isin(ids).to_numpy()
            if hit.any():
                for number, labels in keys[hit].groupby("segment")["label"]:
                    seg = self._segments[int(number)]
                    seg.in_ram(self.folder, self.card).remove(labels.to_numpy())
                    seg.count, seg.dirty = seg.count - len(labels), True
                gone += int(hit.sum())
            kept.append(keys[~hit].reset_index(drop=True) if hit.any() else keys)
        self._keys, self._pending = kept[0], [p for p in kept[1:] if len(p)]
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
        """Write what ``add`` staged and ``remove_recordings`` took out: the segments that changed,
        the key file, then the card in one rename. After a removal the key file holds every key,
        and it alone is in force. Sealed segments that were changed are dropped from RAM after."""
        if not self._pending and not self._removed:
            if self.card.generation == 0:  # an empty index still gets its card
                self._write_card(self.card)
            return
        gen = self.card.generation + 1
        if self._open_is_full():
            self._open = None  # full: sealed, so the next update does not load it
        for number, seg in enumerate(self._segments):
            if seg.dirty:
                seg.write(self.folder, segment_file(number, gen))
        added = pd.concat(self._pending, ignore_index=True) if self._pending else empty_keys()
        key_file = f"keys-{gen:06d}.parquet"
        everything = pd.concat([self._keys, added], ignore_index=True)
        tmp = self.folder / f".{key_file}.tmp"
        written = everything if self._removed else added
        pq.write_table(pa.Table.from_pandas(written, schema=KEYS_SCHEMA, preserve_index=False), tmp)
        os.replace(tmp, self.folder / key_file)
        key_files = (key_file,) if self._removed else (*self.card.key_files, key_file)
        card = IndexCard(**{**self.card.__dict__, "count": len(self), "generation": gen,
                            "segments": tuple((s.file, s.count) for s in self._segments),
                            "open_segment": self._open, "key_files": key_files, "version": FORMAT_VERSION})
        self._write_card(card)
        self.card = card
        for number, seg in enumerate(self._segments):
            if number != self._open:
                seg.release()
        self._keys = everything.sort_values("label", ignore_index=True)
        self._pending = []
        self._removed = False
        self._remove_stray_files()

    def set_expansion_search(self, expansion_search: int) -> None:
        """Search with this breadth from now on; written to the card at once (the vectors stay)."""
        self._writable("change it")
        self.card = IndexCard(**{**self.card.__dict__, "expansion_search": int(expansion_search)})
        if self.card.generation:
            self._write_card(self.card)

    def _write_card(self, card: IndexCard) -> None:
        tmp = self.folder / f".{CARD}.tmp"
        tmp.write_text(card.to_json())
        os.replace(tmp, self.folder / CARD)

    def _remove_stray_files(self) -> None:
        keep = {CARD, *(f for f, _ in self.card.segments), *self.card.key_files}
        for f in self.folder.iterdir():
            ours = f.name.startswith(("vectors-", "keys-", ".vectors-", ".keys-", f".{CARD}"))
            if f.name not in keep and ours and f.is_file():
                f.unlink()

    # ------------------------------------------------------------------ search

    def search(self, vector: np.ndarray, k: int = 100, exact: bool | None = None) -> pd.DataFrame:
        """The ``k`` windows most similar to ``vector``, most similar first.

        Columns: recording_id, start_sample, model_id, similarity (cosine, 1 = same direction).
        Each segment is searched for its own ``k`` nearest (``exact=None``: exhaustively below
        ``EXACT_BELOW`` vectors, by the graph above; sealed segments memory-mapped) and the
        results merged by similarity.
        """
        q = unit_rows(vector)
        if q.shape != (1, self.card.dim):
            raise SimilarityIndexError(f"query of shape {np.shape(vector)}, the index holds {self.card.dim}-d "
                                       f"embeddings of model {self.card.model_id}")
        if self._pending:
            raise SimilarityIndexError(f"{self.folder}: commit the added windows before searching")
        labels, similarity = search_segments(self._segments, self.folder, self.card, q[0], k, exact)
        return self._result(labels, similarity)

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
