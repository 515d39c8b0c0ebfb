"""The store's similarity index stays in step with the store: an update reads only the embedding
files it has not read, a search after a run of new recordings finds them, and a recording whose
windows were replaced leaves no stale vector behind."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from models import every_window_model
from pam.analysis.similar import similar
from pam.analysis.similarity import SimilarityIndex
from pam.analysis.store_index import index_folder, read_sources, update_index
from pam.config import DetectConfig, PamConfig, RetriesConfig
from pam.ops.pipeline import detect_stage, scan_stage
from pam.store.embeddings import read_embeddings
from pam.store.store import Store
from pamstore import scan_and_detect
from synth import chirp, noise, write_wav

RATE = 16000


def config(model, channel=0) -> PamConfig:
    return PamConfig(model=str(model), detect=DetectConfig(num_workers=0, batch_size=4, embeddings=True,
                                                           channel=channel),
                     retries=RetriesConfig(count=0, delay_s=0))


def stereo(i: int, call: bool) -> np.ndarray:
    """Channel 0: noise (with the chirp at 0-3 s when ``call``); channel 1: other noise."""
    left = noise(7.5, RATE, seed=i)
    if call:
        left[:3 * RATE] = chirp(3.0, RATE)
    return np.stack([left, noise(7.5, RATE, seed=100 + i)], axis=1)


@pytest.fixture()
def first_night(tmp_path):
    for i in range(3):
        start = datetime(2024, 5, 1, 5, 0, tzinfo=timezone.utc) + timedelta(minutes=i)
        write_wav(tmp_path / "night1" / f"S{i % 2}" / start.strftime("%Y%m%d_%H%M%S.WAV"), stereo(i, i == 0), RATE)
    write_wav(tmp_path / "call.wav", chirp(3.0, RATE), RATE)
    model = every_window_model(tmp_path / "m.pt")
    store = Store(tmp_path / "store")
    scan_and_detect(tmp_path / "night1", store, config(model))
    model_id = read_embeddings(store).rows.column("model_id")[0].as_py()
    return tmp_path, store, model, model_id


def test_an_update_reads_only_new_embeddings_and_search_finds_new_recordings(first_night):
    tmp, store, model, model_id = first_night
    first = update_index(store, model_id)
    n1 = len(read_embeddings(store, model_id=model_id))
    assert first.windows_read == first.added == len(first.index) == n1 > 0
    again = update_index(store, model_id)
    assert (again.windows_read, again.files_read, again.added, len(again.index)) == (0, 0, 0, n1)

    # a second night: two new recordings at a new site, one with the call
    for i in range(2):
        start = datetime(2024, 5, 2, 5, 0, tzinfo=timezone.utc) + timedelta(minutes=i)
        write_wav(tmp / "night2" / "S2" / start.strftime("%Y%m%d_%H%M%S.WAV"), stereo(10 + i, i == 1), RATE)
    scan_and_detect(tmp / "night2", store, config(model))
    new = read_embeddings(store, model_id=model_id, sites=["S2"])
    second = update_index(store, model_id)
    assert second.windows_read == second.added == len(new) > 0  # the new night's windows, not the season's
    assert len(second.index) == n1 + len(new)
    assert set(read_sources(index_folder(store, model_id))["recording_id"].dropna()) == \
        set(read_embeddings(store, model_id=model_id).rows.column("recording_id").to_pylist())

    hits = similar(store, example=tmp / "call.wav", top=2).rows
    assert set(hits["site"]) == {"S0", "S2"} and set(hits["start_s"]) == {0.0}  # both calls, the new one too


def test_a_replaced_recording_leaves_no_stale_vector(first_night):
    tmp, store, model, model_id = first_night
    update_index(store, model_id)
    before = read_embeddings(store, model_id=model_id)
    rows = before.rows.to_pandas()
    call = np.flatnonzero((rows["site"] == "S0") & (rows["start_s"] == 0.0))
    call_rec = rows["recording_id"].iloc[call[0]]
    old_vector = before.vectors[call[0]].astype(np.float32)
    hit = similar(store, at=f"{call_rec}@1.0", top=1).rows.iloc[0]
    assert (hit["recording_id"], hit["similarity"]) == (call_rec, pytest.approx(1.0, abs=1e-3))

    # the same recordings analysed again, forced, from their other channel: same keys, other vectors
    with store.run_lock(0, what="test rerun"):
        scan = scan_stage(tmp / "night1", store, config(model, channel=1))
        detect_stage(store, [scan.dump], config(model, channel=1), force=True, progress=False)
    after = read_embeddings(store, model_id=model_id)
    assert len(after) == len(before)
    assert set(after.rows.column("recording_id").to_pylist()) == set(rows["recording_id"])

    update = update_index(store, model_id)
    assert update.removed == len(before) and update.added == len(after) == len(update.index)
    found = update.index.search(old_vector, k=3, exact=True)
    # the old call vector is gone: nothing in the index is that window any more
    assert not ((found["recording_id"] == call_rec) & (found["similarity"] > 0.999)).any()
    new_rows = after.rows.to_pandas()
    at = np.flatnonzero((new_rows["recording_id"] == call_rec) & (new_rows["start_s"] == 0.0))[0]
    top = SimilarityIndex.open(index_folder(store, model_id)).search(after.vectors[at], k=1, exact=True).iloc[0]
    assert (top["recording_id"], top["similarity"]) == (call_rec, pytest.approx(1.0, abs=1e-3))
    # pam similar with the call clip no longer lists the replaced window as a near-copy
    listed = similar(store, example=tmp / "call.wav", top=3).rows
    assert not ((listed["recording_id"] == call_rec) & (listed["start_s"] == 0.0) & (listed["similarity"] > 0.99)).any()


def test_an_index_from_before_the_sidecar_is_rebuilt(first_night):
    _tmp, store, _model, model_id = first_night
    n = update_index(store, model_id).added
    (index_folder(store, model_id) / "sources.parquet").unlink()
    rebuilt = update_index(store, model_id)
    assert rebuilt.windows_read == rebuilt.added == len(rebuilt.index) == n


def test_an_index_built_under_the_earlier_search_default_searches_with_the_current_one(first_night):
    import json

    from pam.analysis.similarity import EXPANSION_SEARCH

    _tmp, store, _model, model_id = first_night
    update_index(store, model_id)
    card_file = index_folder(store, model_id) / "index.json"
    card = json.loads(card_file.read_text())
    card["expansion_search"] = 1024  # as pam wrote it before the default became 16,384
    card_file.write_text(json.dumps(card))
    assert SimilarityIndex.open(index_folder(store, model_id)).card.expansion_search == 1024
    again = update_index(store, model_id)
    assert again.added == 0 and again.index.card.expansion_search == EXPANSION_SEARCH
    assert json.loads(card_file.read_text())["expansion_search"] == EXPANSION_SEARCH
    assert len(SimilarityIndex.open(index_folder(store, model_id))) == len(again.index)



def test_a_nightly_update_loads_only_the_open_segment(first_night, monkeypatch):
    import pam.analysis.index_segments as index_segments
    import pam.analysis.similarity as similarity

    tmp, store, model, model_id = first_night
    n1 = len(read_embeddings(store, model_id=model_id))
    monkeypatch.setattr(similarity, "SEGMENT_VECTORS", max(1, n1 // 2))  # the first night fills a segment or two
    first = update_index(store, model_id)
    assert len(first.index.segment_counts) >= 2 and sum(first.index.segment_counts) == n1
    sealed = first.index.segment_counts[:-1]
    loads = []
    real = index_segments.load_usearch
    monkeypatch.setattr(index_segments, "load_usearch",
                        lambda path, card, view: loads.append((path.name, view)) or real(path, card, view))
    for i in range(2):
        start = datetime(2024, 5, 2, 5, 0, tzinfo=timezone.utc) + timedelta(minutes=i)
        write_wav(tmp / "night2" / "S2" / start.strftime("%Y%m%d_%H%M%S.WAV"), stereo(10 + i, i == 1), RATE)
    scan_and_detect(tmp / "night2", store, config(model))
    second = update_index(store, model_id)
    assert second.added > 0 and second.index.segment_counts[:len(sealed)] == sealed
    assert not [name for name, view in loads if not view and not name.startswith(f"vectors-s{len(sealed):06d}")]
    hits = similar(store, example=tmp / "call.wav", top=2).rows  # every segment searched, merged
    assert set(hits["site"]) == {"S0", "S2"} and set(hits["start_s"]) == {0.0}
