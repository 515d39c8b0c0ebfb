"""The similarity index: planted neighbours, agreement with exact search, idempotent adds, commits."""

from __future__ import annotations

import numpy as np
import pytest

from pam.analysis.similarity import (
    SimilarityIndex,
    SimilarityIndexError,
    build_index,
    unit_rows,
)

MODEL = "birdnet-test"


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors in clusters spread along low-dimensional subspaces, like real embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    basis = rng.standard_normal((clusters, 8, dim)) / np.sqrt(dim) * 4
    c = rng.integers(0, clusters, n)
    x = centres[c] + np.einsum("nk,nkd->nd", rng.standard_normal((n, 8)), basis[c])
    x += rng.standard_normal((n, dim)) * 0.05
    return unit_rows(x)


def keys(n: int, offset: int = 0) -> tuple[list[str], list[int]]:
    return [f"rec-{(i + offset) // 100:04d}" for i in range(n)], [((i + offset) % 100) * 72000 for i in range(n)]


def test_the_planted_neighbour_comes_first(tmp_path):
    x = clustered(3000, 64, 30, seed=1)
    rng = np.random.default_rng(2)
    target = 1234
    query = x[target] + rng.standard_normal(64).astype(np.float32) * 0.01  # the example call, slightly off
    recs, starts = keys(len(x))
    for exact in (True, False):
        index = build_index(tmp_path / f"idx-{exact}", [(recs, starts, x)], MODEL)
        hits = index.search(query, k=10, exact=exact)
        assert (hits.recording_id.iloc[0], hits.start_sample.iloc[0]) == (recs[target], starts[target])
        assert hits.model_id.iloc[0] == MODEL
        assert hits.similarity.iloc[0] > 0.99
        assert list(hits.similarity) == sorted(hits.similarity, reverse=True)


def test_approximate_search_agrees_with_exact(tmp_path):
    x = clustered(20000, 96, 40, seed=3)
    rng = np.random.default_rng(4)
    queries = unit_rows(x[rng.choice(len(x), 20)] + rng.standard_normal((20, 96)) * 0.05)  # new points
    recs, starts = keys(len(x))
    index = build_index(tmp_path / "idx", [(recs[i:i + 5000], starts[i:i + 5000], x[i:i + 5000])
                                           for i in range(0, len(x), 5000)], MODEL)
    k, recalls = 100, []
    for q in queries:
        truth = np.argsort(-(x @ q))[:k]
        want = {(recs[i], starts[i]) for i in truth}
        hits = index.search(q, k=k, exact=False)
        recalls.append(len(want & set(zip(hits.recording_id, hits.start_sample))) / k)
    assert np.mean(recalls) >= 0.95, recalls


def test_re_adding_keys_is_idempotent_and_survives_reopening(tmp_path):
    x = clustered(600, 32, 5, seed=5)
    recs, starts = keys(600)
    index = build_index(tmp_path / "idx", [(recs[:400], starts[:400], x[:400])], MODEL)
    assert len(index) == 400
    # the nightly update sees last night's windows again, plus new ones, some twice in one batch
    again = build_index(tmp_path / "idx", [(recs[200:600] + recs[500:600], starts[200:600] + starts[500:600],
                                            np.concatenate([x[200:600], x[500:600]]))], MODEL)
    assert len(again) == 600
    reopened = SimilarityIndex.open(tmp_path / "idx")
    assert len(reopened) == 600 and reopened.card.generation == 2
    assert reopened.add(recs, starts, x, MODEL) == 0
    hit = reopened.search(x[555], k=1, exact=True)
    assert (hit.recording_id[0], hit.start_sample[0]) == (recs[555], starts[555])
    files = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert files == ["index.json", "keys-000001.parquet", "keys-000002.parquet", "vectors-s000000-g000002.usearch"]


def test_a_memory_mapped_view_searches_but_refuses_adds(tmp_path):
    x = clustered(500, 32, 5, seed=6)
    recs, starts = keys(500)
    build_index(tmp_path / "idx", [(recs, starts, x)], MODEL)
    view = SimilarityIndex.open(tmp_path / "idx", view=True)
    hit = view.search(x[42], k=1)
    assert (hit.recording_id[0], hit.start_sample[0]) == (recs[42], starts[42])
    with pytest.raises(SimilarityIndexError, match="read-only view"):
        view.add(recs[:1], starts[:1], x[:1], MODEL)


def test_an_uncommitted_add_is_not_kept(tmp_path):
    x = clustered(300, 32, 5, seed=7)
    recs, starts = keys(300)
    build_index(tmp_path / "idx", [(recs[:100], starts[:100], x[:100])], MODEL)
    index = SimilarityIndex.open(tmp_path / "idx")
    assert index.add(recs, starts, x, MODEL) == 200  # e.g. the process is killed before commit()
    assert len(SimilarityIndex.open(tmp_path / "idx")) == 100


def test_bad_additions_are_refused_with_one_line(tmp_path):
    x = clustered(50, 32, 2, seed=8)
    recs, starts = keys(50)
    index = build_index(tmp_path / "idx", [(recs, starts, x)], MODEL)
    with pytest.raises(SimilarityIndexError, match="one index folder per embedding model") as err:
        index.add(recs, starts, x, "another-model")
    assert "\n" not in str(err.value)
    with pytest.raises(SimilarityIndexError, match="32-d embeddings"):
        index.add(recs, starts, x[:, :16], MODEL)
    with pytest.raises(SimilarityIndexError, match="NaN"):
        index.add(["r"], [0], np.full((1, 32), np.nan), MODEL)
    with pytest.raises(SimilarityIndexError, match="no similarity index here"):
        SimilarityIndex.open(tmp_path / "nothing")
