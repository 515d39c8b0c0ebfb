"""The similarity index in size-capped segments: a full segment is sealed and left alone, an update
loads only the open segment, a search over segments agrees with one over a single segment, removal
reaches sealed segments, re-adding is idempotent across segments, and a format-1 index converts."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pam.analysis.index_segments as index_segments
from pam.analysis.similarity import SimilarityIndex, build_index, unit_rows, window_labels
from test_similarity import MODEL, clustered, keys


@pytest.fixture()
def loads(monkeypatch):
    """Every usearch file the index reads: (file name, memory-mapped?)."""
    seen: list[tuple[str, bool]] = []
    real = index_segments.load_usearch

    def counting(path, card, view):
        seen.append((path.name, view))
        return real(path, card, view)

    monkeypatch.setattr(index_segments, "load_usearch", counting)
    return seen


def card(folder) -> dict:
    return json.loads((folder / "index.json").read_text())


def test_a_full_segment_is_sealed_and_its_file_left_alone(tmp_path):
    x = clustered(2600, 32, 8, seed=11)
    recs, starts = keys(2600)
    folder = tmp_path / "idx"
    index = SimilarityIndex.create(folder, MODEL, 32, segment_vectors=1000)
    assert index.add(recs[:1200], starts[:1200], x[:1200], MODEL) == 1200
    index.commit()
    c = card(folder)
    assert c["version"] == 2 and [s["vectors"] for s in c["segments"]] == [1000, 200] and c["open_segment"] == 1
    sealed = folder / c["segments"][0]["file"]
    before = sealed.read_bytes()
    for lo, hi in ((1200, 1500), (1500, 1900)):  # two more nights: into the open segment only
        index = SimilarityIndex.open(folder)
        assert index.add(recs[lo:hi], starts[lo:hi], x[lo:hi], MODEL) == hi - lo
        index.commit()
        assert card(folder)["segments"][0]["file"] == sealed.name and sealed.read_bytes() == before
    index = SimilarityIndex.open(folder)
    index.add(recs[1900:], starts[1900:], x[1900:], MODEL)  # fills segment 1, opens segment 2
    index.commit()
    c = card(folder)
    assert [s["vectors"] for s in c["segments"]] == [1000, 1000, 600] and c["open_segment"] == 2
    assert c["segments"][0]["file"] == sealed.name and sealed.read_bytes() == before
    files = {p.name for p in folder.glob("vectors-*")}
    assert files == {s["file"] for s in c["segments"]}  # the open segment's earlier files were removed
    reopened = SimilarityIndex.open(folder)
    assert len(reopened) == 2600 and reopened.segment_counts == [1000, 1000, 600]
    for i in (5, 1234, 2599):
        hit = reopened.search(x[i], k=1, exact=True)
        assert (hit.recording_id[0], hit.start_sample[0]) == (recs[i], starts[i])


def test_an_update_loads_only_the_open_segment(tmp_path, loads):
    x = clustered(2500, 32, 8, seed=12)
    recs, starts = keys(2500)
    folder = tmp_path / "idx"
    index = SimilarityIndex.create(folder, MODEL, 32, segment_vectors=1000)
    index.add(recs[:2100], starts[:2100], x[:2100], MODEL)
    index.commit()
    files = [s["file"] for s in card(folder)["segments"]]
    loads.clear()
    index = SimilarityIndex.open(folder)
    assert loads == [(files[2], False)]  # the open segment, in RAM; the sealed ones not at all
    assert index.add(recs[2100:], starts[2100:], x[2100:], MODEL) == 400
    index.commit()
    assert loads == [(files[2], False)]
    hits = index.search(x[17], k=5)
    assert (hits.recording_id[0], hits.start_sample[0]) == (recs[17], starts[17])
    assert sorted(loads[1:]) == [(files[0], True), (files[1], True)]  # searched memory-mapped
    loads.clear()
    view = SimilarityIndex.open(folder, view=True)
    view.search(x[2300], k=5)
    assert loads and all(mapped for _, mapped in loads)


def test_a_segment_filled_exactly_is_sealed_at_commit(tmp_path, loads):
    x = clustered(2100, 32, 8, seed=17)
    recs, starts = keys(2100)
    folder = tmp_path / "idx"
    build_index(folder, [(recs[:2000], starts[:2000], x[:2000])], MODEL, segment_vectors=1000)
    assert card(folder)["open_segment"] is None
    loads.clear()
    index = build_index(folder, [(recs, starts, x)], MODEL)
    assert loads == [] and index.segment_counts == [1000, 1000, 100]  # neither full segment was loaded
    assert card(folder)["open_segment"] == 2


def test_a_crash_after_sealing_before_the_commit_leaves_the_previous_index(tmp_path):
    x = clustered(1800, 32, 8, seed=18)
    recs, starts = keys(1800)
    folder = tmp_path / "idx"
    build_index(folder, [(recs[:600], starts[:600], x[:600])], MODEL, segment_vectors=1000)
    before = card(folder)
    index = SimilarityIndex.open(folder)
    index.add(recs, starts, x, MODEL)  # seals segment 0 (written at once) and opens segment 1
    assert index.segment_counts == [1000, 800] and (folder / "vectors-s000000-g000002.usearch").exists()
    del index  # killed before commit()
    assert card(folder) == before
    again = SimilarityIndex.open(folder)
    assert len(again) == 600 and again.search(x[10], k=1, exact=True).recording_id[0] == recs[10]
    again.add(recs[:700], starts[:700], x[:700], MODEL)
    again.commit()
    assert {p.name for p in folder.glob("vectors-*")} == {"vectors-s000000-g000002.usearch"}
    assert SimilarityIndex.open(folder).segment_counts == [700]


def test_search_over_segments_finds_the_planted_neighbour_and_agrees_with_exact(tmp_path):
    x = clustered(20000, 96, 40, seed=3)
    rng = np.random.default_rng(4)
    recs, starts = keys(len(x))
    batches = [(recs[i:i + 5000], starts[i:i + 5000], x[i:i + 5000]) for i in range(0, len(x), 5000)]
    many = build_index(tmp_path / "many", batches, MODEL, segment_vectors=6000)
    one = build_index(tmp_path / "one", batches, MODEL)
    assert many.segment_counts == [6000, 6000, 6000, 2000] and one.segment_counts == [20000]
    target = 13_579  # in the third segment
    query = x[target] + rng.standard_normal(96).astype(np.float32) * 0.01
    # exhaustive within each segment (None: segments under EXACT_BELOW are), so the merge across
    # segments is checked exactly; HNSW's graph is built on threads and differs from build to
    # build, and on this clustered data it missed this one planted window in 5 of 21 builds
    # (recall below stays at 0.997-0.999), so the approximate search is held to recall
    for exact in (True, None):
        hits = many.search(query, k=10, exact=exact)
        assert (hits.recording_id[0], hits.start_sample[0]) == (recs[target], starts[target])
        assert list(hits.similarity) == sorted(hits.similarity, reverse=True) and len(hits) == 10
    queries = unit_rows(x[rng.choice(len(x), 20)] + rng.standard_normal((20, 96)) * 0.05)
    k, recalls = 100, []
    for q in queries:
        merged = many.search(q, k=k, exact=True)
        single = one.search(q, k=k, exact=True)
        np.testing.assert_allclose(merged.similarity, single.similarity, atol=1e-6)  # the same top k
        truth = {(recs[i], starts[i]) for i in np.argsort(-(x @ q))[:k]}
        approx = many.search(q, k=k, exact=False)
        recalls.append(len(truth & set(zip(approx.recording_id, approx.start_sample))) / k)
    assert np.mean(recalls) >= 0.95, recalls


def test_removing_a_recording_reaches_its_sealed_segment_only(tmp_path, loads):
    x = clustered(2500, 32, 8, seed=13)
    recs, starts = keys(2500)
    folder = tmp_path / "idx"
    build_index(folder, [(recs, starts, x)], MODEL, segment_vectors=1000)
    files = [s["file"] for s in card(folder)["segments"]]
    untouched = (folder / files[0]).read_bytes()
    gone_rec = recs[1450]  # rec-0014: windows 1400-1499, all in sealed segment 1
    loads.clear()
    index = SimilarityIndex.open(folder)
    assert index.remove_recordings([gone_rec, "not-indexed"]) == 100
    assert loads == [(files[2], False), (files[1], False)]  # the open one, and the one holding the windows
    index.commit()
    c = card(folder)
    assert [s["vectors"] for s in c["segments"]] == [1000, 900, 500]
    assert c["segments"][0]["file"] == files[0] and (folder / files[0]).read_bytes() == untouched
    assert c["segments"][1]["file"] != files[1] and not (folder / files[1]).exists()
    reopened = SimilarityIndex.open(folder)
    assert len(reopened) == 2400
    hits = reopened.search(x[1450], k=20, exact=True)
    assert gone_rec not in set(hits.recording_id)
    assert reopened.add(recs, starts, x, MODEL) == 100  # only the removed windows come back, into the open segment
    assert reopened.segment_counts == [1000, 900, 600]


def test_re_adding_keys_of_sealed_segments_adds_nothing(tmp_path, loads):
    x = clustered(2200, 32, 8, seed=14)
    recs, starts = keys(2200)
    folder = tmp_path / "idx"
    build_index(folder, [(recs, starts, x)], MODEL, segment_vectors=1000)
    loads.clear()
    index = build_index(folder, [(recs[:1500], starts[:1500], x[:1500])], MODEL)  # last week's nights again
    assert len(index) == 2200 and index.segment_counts == [1000, 1000, 200]
    assert [view for _, view in loads] == [False]  # the key files answered, not the sealed segments
    assert card(folder)["generation"] == 1  # nothing new: nothing written


def write_format_1(folder, x, recs, starts) -> None:
    """An index as pam wrote it before segments: one vector file, key files without a segment column."""
    from usearch.index import Index

    folder.mkdir()
    labels = window_labels(recs, starts, MODEL)
    index = Index(ndim=x.shape[1], metric="cos", dtype="bf16", connectivity=16, expansion_add=64)
    index.add(labels, x)
    index.save(str(folder / "vectors-000001.usearch"))
    schema = pa.schema([pa.field("label", pa.uint64(), nullable=False),
                        pa.field("recording_id", pa.string(), nullable=False),
                        pa.field("start_sample", pa.int64(), nullable=False)],
                       metadata={"index_keys_version": "1"})
    pq.write_table(pa.table({"label": labels, "recording_id": recs, "start_sample": starts}, schema=schema),
                   folder / "keys-000001.parquet")
    (folder / "index.json").write_text(json.dumps({
        "connectivity": 16, "count": len(x), "dim": x.shape[1], "dtype": "bf16", "expansion_add": 64,
        "expansion_search": 16384, "generation": 1, "key_files": ["keys-000001.parquet"],
        "model_id": MODEL, "vector_file": "vectors-000001.usearch", "version": 1}))


def test_a_single_file_index_opens_searches_and_becomes_segment_0(tmp_path):
    x = clustered(900, 32, 6, seed=15)
    recs, starts = keys(900)
    folder = tmp_path / "old"
    write_format_1(folder, x[:600], recs[:600], starts[:600])
    view = SimilarityIndex.open(folder, view=True)
    hit = view.search(x[321], k=1)
    assert (hit.recording_id[0], hit.start_sample[0]) == (recs[321], starts[321])
    index = SimilarityIndex.open(folder)
    assert index.add(recs, starts, x, MODEL) == 300  # the old keys are known
    index.commit()
    c = card(folder)
    assert c["version"] == 2 and c["open_segment"] == 0 and "vector_file" not in c
    assert c["segments"] == [{"file": "vectors-s000000-g000002.usearch", "vectors": 900}]
    assert sorted(p.name for p in folder.iterdir()) == ["index.json", "keys-000001.parquet", "keys-000002.parquet",
                                                        "vectors-s000000-g000002.usearch"]
    reopened = SimilarityIndex.open(folder)
    for i in (5, 321, 777):
        hit = reopened.search(x[i], k=1, exact=True)
        assert (hit.recording_id[0], hit.start_sample[0]) == (recs[i], starts[i])
    assert reopened.remove_recordings([recs[5]]) == 100  # keys from the format-1 key file sit in segment 0
    reopened.commit()
    assert len(SimilarityIndex.open(folder)) == 800


def test_a_full_single_file_index_stays_as_it_is_and_a_new_segment_takes_additions(tmp_path, monkeypatch, loads):
    x = clustered(700, 32, 6, seed=16)
    recs, starts = keys(700)
    folder = tmp_path / "old"
    write_format_1(folder, x[:500], recs[:500], starts[:500])
    before = (folder / "vectors-000001.usearch").read_bytes()
    monkeypatch.setattr(index_segments, "SEGMENT_VECTORS", 500)  # as if it held a full segment's worth
    index = SimilarityIndex.open(folder)
    assert loads == []  # full: sealed, not loaded
    assert index.add(recs, starts, x, MODEL) == 200
    index.commit()
    c = card(folder)
    assert [(s["file"], s["vectors"]) for s in c["segments"]] == [("vectors-000001.usearch", 500),
                                                                  ("vectors-s000001-g000002.usearch", 200)]
    assert (folder / "vectors-000001.usearch").read_bytes() == before
    hit = SimilarityIndex.open(folder, view=True).search(x[650], k=1)
    assert hit.recording_id[0] == recs[650]
