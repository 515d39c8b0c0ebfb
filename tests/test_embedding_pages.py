"""The embedding column read straight from its Parquet pages (pam.store.embedding_pages) gives
the vectors pyarrow decodes, for every layout pam or an older pam wrote; a layout it does not
read plainly is left to pyarrow (None), never misread."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pam.store.embedding_pages import map_vectors, read_vectors
from pam.store.embeddings import binary_as_vectors


def binary_column(vectors: np.ndarray, nullable: bool = False) -> tuple[pa.Array, pa.Field]:
    rows = [v.tobytes() for v in vectors]
    return pa.array(rows, pa.binary()), pa.field("embedding", pa.binary(), nullable=nullable)


def write(path, vectors: np.ndarray, nullable: bool = False, column=None, **options) -> None:
    arr, field = binary_column(vectors, nullable)
    arr = arr if column is None else column
    table = pa.table({"recording_id": pa.array([f"r{i % 7}" for i in range(len(arr))]), "embedding": arr},
                     schema=pa.schema([pa.field("recording_id", pa.string()), field]))
    pq.write_table(table, path, **options)


def fast(path) -> np.ndarray | None:
    with pa.memory_map(str(path)) as source:
        return read_vectors(source, pq.ParquetFile(source))


def mapped(path, fn) -> np.ndarray | None:
    with pa.memory_map(str(path)) as source:
        return map_vectors(source, pq.ParquetFile(source), fn)


def vectors_of(n: int, dim: int = 1024, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float16)


PLAIN = {"compression": "none", "use_dictionary": False}


@pytest.mark.parametrize("options", [
    PLAIN,  # as ResultsTable.write_file writes the embedding column
    {**PLAIN, "data_page_version": "2.0"},
    {**PLAIN, "data_page_size": 10_000, "row_group_size": 300},  # many pages, several row groups
    {**PLAIN, "write_statistics": False},
    {"compression": {"recording_id": "zstd", "embedding": "none"}, "use_dictionary": ["recording_id"]},
], ids=["plain", "page-v2", "small-pages-row-groups", "no-statistics", "other-columns-zstd"])
def test_plain_files_read_straight_from_the_pages(tmp_path, options):
    want = vectors_of(1000)
    write(tmp_path / "e.parquet", want, **options)
    got = fast(tmp_path / "e.parquet")
    assert got is not None and got.dtype == np.float16 and got.shape == want.shape
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))


def test_an_optional_column_without_nulls_reads_the_same(tmp_path):
    want = vectors_of(500, dim=64)
    for version in ("1.0", "2.0"):
        write(tmp_path / "e.parquet", want, nullable=True, data_page_version=version, **PLAIN)
        got = fast(tmp_path / "e.parquet")
        assert got is not None and np.array_equal(got.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("options", [
    {"compression": "zstd"},  # how embedding files were written before they went uncompressed
    {"compression": "none", "use_dictionary": True},
    {"compression": "lz4"},
], ids=["zstd", "dictionary", "lz4"])
def test_other_layouts_are_left_to_pyarrow(tmp_path, options):
    want = vectors_of(300, dim=128)
    write(tmp_path / "e.parquet", np.concatenate([want, want[:10]]), **options)  # repeats: a dictionary pays
    assert fast(tmp_path / "e.parquet") is None


def test_nulls_and_mixed_sizes_are_left_to_pyarrow(tmp_path):
    v = vectors_of(50, dim=16)
    with_null = pa.array([x.tobytes() for x in v[:-1]] + [None], pa.binary())
    write(tmp_path / "null.parquet", v, nullable=True, column=with_null, **PLAIN)
    assert fast(tmp_path / "null.parquet") is None
    mixed = pa.array([x.tobytes() for x in v[:-1]] + [v[-1, :8].tobytes()], pa.binary())
    write(tmp_path / "mixed.parquet", v, column=mixed, **PLAIN)
    assert fast(tmp_path / "mixed.parquet") is None
    with pytest.raises(ValueError, match="different sizes"):
        binary_as_vectors(pq.read_table(tmp_path / "mixed.parquet").column("embedding"))


def test_any_readable_file_serves_the_pages(tmp_path):
    """An object store's file (arrow's input file, no memory map) or a Python file reads the same."""
    want = vectors_of(200, dim=32)
    write(tmp_path / "e.parquet", want, **PLAIN)
    for source in (pa.OSFile(str(tmp_path / "e.parquet")), open(tmp_path / "e.parquet", "rb")):
        with source:
            got = read_vectors(source, pq.ParquetFile(source))
        assert got is not None and np.array_equal(got.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("options", [
    PLAIN,
    {**PLAIN, "data_page_version": "2.0"},
    {**PLAIN, "data_page_size": 10_000, "row_group_size": 300},
    {"compression": {"recording_id": "zstd", "embedding": "none"}, "use_dictionary": ["recording_id"]},
], ids=["plain", "page-v2", "small-pages-row-groups", "other-columns-zstd"])
def test_a_function_of_the_vectors_runs_on_the_pages_where_they_lie(tmp_path, options):
    """map_vectors hands each page's vectors to the function where they lie in the memory map
    (rows 4 + 2048 bytes apart: the length prefix between them; at an odd address too): the
    results are those of the function on the decoded vectors, in row order."""
    want = vectors_of(1000)
    w = np.random.default_rng(1).standard_normal((1024, 3)).astype(np.float32)
    write(tmp_path / "e.parquet", want, **options)
    pages = []

    def fn(v: np.ndarray) -> np.ndarray:
        assert v.dtype == np.float16 and v.strides[1] == 2
        pages.append((v.strides[0], v.flags.aligned))
        return v.astype(np.float32) @ w

    got = mapped(tmp_path / "e.parquet", fn)
    assert got is not None and got.shape == (1000, 3)
    np.testing.assert_allclose(got, want.astype(np.float32) @ w, rtol=1e-5, atol=1e-4)
    assert {stride for stride, _aligned in pages} == {4 + 2048}  # every page in place, none copied
    if "row_group_size" in options:  # a page per row group, at various addresses
        assert len(pages) >= 4 and {aligned for _stride, aligned in pages} == {True, False}


def test_a_head_scores_the_pages_in_place_as_it_scores_a_copy(tmp_path):
    from pam.train.heads import Head, HeadCard, rows_in_place

    want = vectors_of(600)
    head = Head(HeadCard(embedding_model_id="m", embedding_dim=1024, classes=("a", "b"), thresholds={"a": .5, "b": .5}),
                {"w1": np.random.default_rng(2).standard_normal((1024, 2)).astype(np.float32) / 32,
                 "b1": np.zeros(2, np.float32)})
    write(tmp_path / "e.parquet", want, row_group_size=100, **PLAIN)  # a page each, at various addresses
    in_place = []

    def fn(v):
        in_place.append(rows_in_place(v) and not v.flags.c_contiguous)
        return head.scores(v, "m", threads=1)

    got = mapped(tmp_path / "e.parquet", fn)
    assert all(in_place) and len(in_place) >= 6  # pages at odd addresses too: numkong reads them by pointer
    np.testing.assert_allclose(got, head.scores(np.ascontiguousarray(want), "m"), rtol=1e-6, atol=1e-7)


def test_values_of_other_lengths_are_found_after_the_function_ran(tmp_path):
    """A page whose values have other lengths but the same total size (2,046 and 2,050 bytes
    about 2,048) passes the size check; the length prefixes, read after the function, send
    the file to pyarrow (None) and the function's results are dropped."""
    v = vectors_of(300)
    values = [x.tobytes() for x in v]
    values[1], values[2] = values[1][:-2], values[2] + b"\0\0"
    write(tmp_path / "e.parquet", v, column=pa.array(values, pa.binary()), **PLAIN)
    calls = []
    assert mapped(tmp_path / "e.parquet", lambda x: calls.append(len(x)) or x[:, :1].astype(np.float32)) is None
    assert calls  # it ran on the page before the check


def test_other_layouts_give_no_page_results_and_the_functions_errors_are_its_own(tmp_path):
    v = vectors_of(300, dim=128)
    write(tmp_path / "z.parquet", v, compression="zstd")
    assert mapped(tmp_path / "z.parquet", lambda x: x[:, :1].astype(np.float32)) is None
    with_null = pa.array([x.tobytes() for x in v[:-1]] + [None], pa.binary())
    write(tmp_path / "null.parquet", v, nullable=True, column=with_null, **PLAIN)
    assert mapped(tmp_path / "null.parquet", lambda x: x[:, :1].astype(np.float32)) is None
    write(tmp_path / "e.parquet", v, **PLAIN)

    def wrong(x):
        raise ValueError("the function's own error")

    with pytest.raises(ValueError, match="own error"):  # not taken for a layout to leave to pyarrow
        mapped(tmp_path / "e.parquet", wrong)
