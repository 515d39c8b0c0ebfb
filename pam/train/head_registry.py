"""The head registry: the few-shot heads a store's detections can come from, in ``STORE/heads/``.

``pam train-head`` registers each head it trains in its store: the head file itself is copied
to ``heads/head-<id>.npz`` and described by one Parquet row, ``heads/head-<id>.parquet``
(``pam.store.schemas.HEADS``: id, classes, thresholds, the embedding model it reads, its
training summary, when it was registered). The row is written last and atomically, so a
registered head always has its file; registering the same head again rewrites the same two
files (the id is a hash of the weights and the card), so it is idempotent.

``resolve_head`` turns what a user or config names (a head file, or a registered head id) into
the head, which is how ``pam apply-head`` and the nightly flow find it.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import pam.store.schemas as schemas
from pam.store.atomic import write_parquet_atomic
from pam.store.location import require_local_root, store_uri
from pam.store.store import Store
from pam.train.heads import Head, HeadError, load_head


def heads_dir(store: Store | str | os.PathLike) -> Path:
    """``STORE/heads``; a store on object storage is refused in one line (NotOnObjectStorage)."""
    root = store.uri if isinstance(store, Store) else store
    require_local_root(root, "the head registry (pam train-head, pam heads)")
    return Path(store.root if isinstance(store, Store) else root) / "heads"


def head_file(store: Store | str | os.PathLike, head_id: str) -> Path:
    return heads_dir(store) / f"head-{head_id}.npz"


def register_head(store: Store | str | os.PathLike, head: Head, source: str | os.PathLike | None = None,
                  training: dict | None = None) -> dict:
    """Copy ``head`` into ``store``'s registry and describe it in one row; returns the row.

    ``source``: the file it was trained to (kept for the record); ``training``: a summary of
    its training (labelled windows, split, the config), stored as JSON."""
    folder = heads_dir(store)
    folder.mkdir(parents=True, exist_ok=True)
    card = head.card
    path = head.save(head_file(store, head.head_id))
    row = {
        "head_id": head.head_id, "kind": card.kind, "embedding_model_id": card.embedding_model_id,
        "embedding_dim": int(card.embedding_dim), "classes_json": json.dumps(list(card.classes)),
        "thresholds_json": json.dumps(card.thresholds, sort_keys=True),
        "metrics_json": json.dumps(card.metrics, sort_keys=True, default=str),
        "training_json": json.dumps(training or {}, sort_keys=True, default=str),
        "training_fingerprint": card.training_fingerprint, "file": str(path.resolve()),
        "source": None if source is None else str(Path(source).resolve()),
        "registered_at": datetime.now(timezone.utc),
    }
    table = pa.Table.from_pylist([row], schema=schemas.with_version("heads"))
    write_parquet_atomic(table, folder / f"head-{head.head_id}.parquet")
    return row


def read_heads(store: Store | str | os.PathLike) -> pd.DataFrame:
    """Every registered head, newest first (an empty frame with the columns when none)."""
    folder = heads_dir(store)
    files = sorted(folder.glob("head-*.parquet")) if folder.is_dir() else []
    if not files:
        return schemas.HEADS.empty_table().to_pandas()
    out = pd.concat([pq.read_table(f, schema=schemas.HEADS).to_pandas() for f in files], ignore_index=True)
    return out.sort_values("registered_at", ascending=False, kind="stable").reset_index(drop=True)


def registered_head(store: Store | str | os.PathLike, head_id: str) -> Head | None:
    """The registered head ``head_id``, or None when the store has no such head."""
    if not head_id or "/" in head_id or not (heads_dir(store) / f"head-{head_id}.parquet").is_file():
        return None
    head = load_head(head_file(store, head_id))
    if head.head_id != head_id:
        raise HeadError(f"{head_file(store, head_id)} holds head {head.head_id}, not {head_id}: the registry was "
                        f"edited by hand; register the head again with `pam train-head`")
    return head


def resolve_head(store: Store | str | os.PathLike, head: Head | str | os.PathLike) -> Head:
    """The head that ``head`` names: a Head as it is, a head file (.npz), or a head id registered in
    ``store``. HeadError in one line when it is neither."""
    if isinstance(head, Head):
        return head
    if Path(head).is_file():
        return load_head(head)
    root = store.uri if isinstance(store, Store) else str(store)
    if store_uri(root) is not None:
        raise HeadError(f"head {head}: no such head file (registered heads are kept in local stores only, and "
                        f"{root} is on object storage)")
    found = registered_head(store, str(head))
    if found is None:
        known = read_heads(store)["head_id"].tolist()
        listed = f"its heads: {', '.join(known[:5])}{' ...' if len(known) > 5 else ''}" if known else "it has none"
        raise HeadError(f"head {head} is neither a head file nor a head registered in store {root} ({listed}); "
                        f"train and register one with `pam train-head CONFIG`, or list them with `pam heads STORE`")
    return found
