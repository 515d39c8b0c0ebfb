"""``pam similar``: the stored windows nearest to an example call, by cosine similarity of their
embeddings, listed with their site, recording, seconds and UTC time, ready for ``pam review --from``.

The search runs on the store's similarity index (``pam.analysis.similarity``), one folder per
embedding model under ``STORE/index/``; ``pam.analysis.store_index.update_index`` brings it in
step with the store's latest snapshot before each search (reading only the embedding files
the index has not read; the nightly flow keeps it current too). The search visits each of the
index's segments (the sealed ones memory-mapped) and merges their hits by similarity; every hit
is checked against the live rows, so a search never lists a window the store no longer holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from pam.analysis.csv_times import iso_ms
from pam.analysis.similarity import SimilarityIndex
from pam.analysis.store_index import index_folder, update_index
from pam.store.embeddings import embedding_files, read_embeddings
from pam.store.runs import model_source, window_lengths
from pam.store.store import Store

SIMILAR_COLUMNS = ["rank", "similarity", "species", "site", "recording", "start_s", "end_s", "start_time",
                   "recording_id", "start_sample", "model_id"]


class SimilarError(ValueError):
    """A search that cannot run, with the reason and the fix in one line."""


@dataclass
class SimilarResult:
    rows: pd.DataFrame  # SIMILAR_COLUMNS, most similar first
    model_id: str
    indexed: int  # windows in the index
    added: int  # windows the update added
    notes: list[str] = field(default_factory=list)


def embedding_models(store: Store) -> list[str]:
    """The model ids with stored embeddings."""
    files = embedding_files(store)
    if not files:
        return []
    table = store.results.dataset(files, "embedding").to_table(columns=["model_id"])
    return sorted(set(table.column("model_id").to_pylist()))


def choose_model(store: Store, model_id: str | None) -> str:
    models = embedding_models(store)
    if not models:
        raise SimilarError(f"store {store.root} holds no embeddings: run `pam detect` with detect.embeddings: true")
    if model_id is None:
        if len(models) > 1:
            raise SimilarError(f"store {store.root} holds embeddings of {len(models)} models ({', '.join(models)}): "
                               "choose one with --model")
        return models[0]
    if model_id not in models:
        raise SimilarError(f"store {store.root} holds no embeddings of model {model_id}; it has: {', '.join(models)}")
    return model_id


def vector_at(store: Store, model_id: str, at: str) -> np.ndarray:
    """The stored embedding of the window holding second SECONDS of RECORDING (``RECORDING@SECONDS``,
    RECORDING a path or a recording id)."""
    recording, sep, seconds = at.rpartition("@")
    try:
        t = float(seconds)
    except ValueError:
        t = None
    if not sep or not recording or t is None:
        raise SimilarError(f"--at {at!r}: give RECORDING@SECONDS, e.g. dump/AM01/20240501_050000.WAV@12.5")
    done = store.done_table(model_id=model_id, columns=["recording_id", "path"])
    match = done[(done["recording_id"] == recording) | (done["path"] == recording)
                 | (done["path"] == str(Path(recording).resolve()))]
    if match.empty:
        raise SimilarError(f"--at {at!r}: recording {recording} has no stored windows of model {model_id}")
    emb = read_embeddings(store, model_id=model_id, recording_ids=[match["recording_id"].iloc[0]])
    starts = emb.rows.column("start_s").to_numpy()
    lengths = window_lengths(store, model_id)
    ends = starts + np.array([lengths.get(k, 0.0) for k in emb.rows.column("settings_hash").to_pylist()])
    inside = np.flatnonzero((starts <= t) & (t < ends))
    if not len(inside):
        raise SimilarError(f"--at {at!r}: no stored window of {recording} holds second {t:g}")
    best = inside[np.argmin(np.abs((starts[inside] + ends[inside]) / 2 - t))]  # the window centred nearest
    return emb.vectors[best].astype(np.float32)


def load_embedding_model(store: Store, model_id: str):
    """The detection model that computed ``model_id``'s embeddings: the file its runs name, or the
    catalog model (pam.detect.catalog) with that id."""
    from pam.detect.catalog import LOADERS, load_model

    source = model_source(store, model_id)
    if source and Path(source).is_file():
        return load_model(source)
    for name in LOADERS:
        try:
            model = load_model(name)
        except Exception:  # a catalog model whose package is not installed
            continue
        if model.model_id == model_id:
            return model
    raise SimilarError(f"cannot load model {model_id} to embed the example (its runs name {source!r}): "
                       "use --at RECORDING@SECONDS with a stored window instead")


def vector_of_clip(store: Store, model_id: str, clip: Path) -> np.ndarray:
    """The example clip's embedding: the mean over the model's windows of it (one window if shorter)."""
    import torch

    import soundfile as sf

    from pam.io.audio import AudioError, resample

    if not Path(clip).is_file():
        raise SimilarError(f"--example {clip}: file not found")
    model = load_embedding_model(store, model_id)
    try:
        data, rate = sf.read(str(clip), dtype="float32", always_2d=True)
        audio = resample(torch.from_numpy(data[:, 0].copy()), rate, model.sample_rate).numpy()
    except (AudioError, RuntimeError, sf.LibsndfileError) as exc:
        raise SimilarError(f"--example {clip}: cannot read it as audio ({exc})") from None
    n = model.window_samples
    audio = np.pad(audio, (0, max(0, n - len(audio))))
    windows = np.stack([audio[i:i + n] for i in range(0, len(audio) - n + 1, n)]).astype(np.float32)
    with torch.no_grad():
        out = model.forward(torch.from_numpy(windows))
    if out.embeddings is None:
        raise SimilarError(f"model {model_id} gives no embeddings")
    return out.embeddings.float().mean(0).cpu().numpy()


def find_similar(store: Store, vector: np.ndarray, model_id: str, top: int = 100, sites: Sequence[str] | None = None,
                 start: date | None = None, end: date | None = None, label: str = "similar",
                 index: SimilarityIndex | None = None) -> pd.DataFrame:
    """The ``top`` stored windows most similar to ``vector`` within the sites and UTC dates asked."""
    index = index or SimilarityIndex.open(index_folder(store, model_id), view=True)
    done = store.done_table(model_id=model_id, columns=["recording_id", "path", "site"]).drop_duplicates("recording_id")
    wanted = done if sites is None else done[done["site"].isin(list(sites))]
    k = top
    while True:  # widen the search until enough hits pass the filters, or all windows were searched
        hits = index.search(vector, k=min(k, len(index)))
        emb = read_embeddings(store, model_id=model_id, sites=sites, start=start, end=end,
                              recording_ids=sorted(set(hits["recording_id"]) & set(wanted["recording_id"])))
        rows = emb.rows.select(["recording_id", "start_sample", "start_s", "start_time", "settings_hash"]).to_pandas()
        if start or end:
            day = rows["start_time"].dt.date
            rows = rows[((day >= start) if start else True) & ((day <= end) if end else True)]
        found = hits.merge(rows, on=["recording_id", "start_sample"])
        if len(found) >= top or k >= len(index):
            break
        k *= 4
    lengths = window_lengths(store, model_id)
    found = found.merge(done, on="recording_id").sort_values("similarity", ascending=False, kind="stable").head(top)
    out = pd.DataFrame({
        "rank": np.arange(1, len(found) + 1), "similarity": found["similarity"].round(4).to_numpy(),
        "species": label, "site": found["site"].to_numpy(), "recording": found["path"].to_numpy(),
        "start_s": found["start_s"].to_numpy(),
        "end_s": found["start_s"].to_numpy() + np.array([lengths.get(k, np.nan) for k in found["settings_hash"]]),
        "start_time": iso_ms(pd.to_datetime(found["start_time"], utc=True)).to_numpy(),
        "recording_id": found["recording_id"].to_numpy(), "start_sample": found["start_sample"].to_numpy(),
        "model_id": model_id})
    return out[SIMILAR_COLUMNS]


def similar(store: Store, example: Path | None = None, at: str | None = None, top: int = 100,
            sites: Sequence[str] | None = None, start: date | None = None, end: date | None = None,
            model_id: str | None = None, label: str = "similar") -> SimilarResult:
    """Update the index, then list the windows nearest to the example clip or the stored window ``at``."""
    if (example is None) == (at is None):
        raise SimilarError("give one of --example CLIP.wav or --at RECORDING@SECONDS")
    model_id = choose_model(store, model_id)
    vector = vector_at(store, model_id, at) if at is not None else vector_of_clip(store, model_id, Path(example))
    update = update_index(store, model_id)
    rows = find_similar(store, vector, model_id, top, sites, start, end, label, index=update.index)
    notes = [] if len(rows) else ["no stored window matched the site and date filters"]
    return SimilarResult(rows, model_id, len(update.index), update.added, notes)
