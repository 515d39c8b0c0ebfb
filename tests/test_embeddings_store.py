"""Embeddings in the store: every analysed window's embedding committed once, in the same
Delta transaction as its recording's detections and done row; a rerun adds nothing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from models import every_window_model
from pam.config import DetectConfig, PamConfig, RetriesConfig
from pam.detect.checkpoint import load_checkpoint
from pam.store.embeddings import read_embeddings
from pam.store.store import Store
from pamstore import scan_and_detect
from synth import noise, write_wav


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("emb")
    for i in range(3):
        start = datetime(2024, 5, 1, 23, 59, tzinfo=timezone.utc) + timedelta(minutes=i)
        write_wav(tmp / "dump" / f"AM0{i % 2}" / start.strftime("%Y%m%d_%H%M%S.WAV"), noise(5.0, 16000, seed=i), 16000)
    model = every_window_model(tmp / "m.pt")
    conf = PamConfig(model=str(model), detect=DetectConfig(num_workers=0, flush_every=2, batch_size=3, embeddings=True),
                     retries=RetriesConfig(count=0, delay_s=0))
    store = Store(tmp / "store")
    scan_and_detect(tmp / "dump", store, conf)
    return tmp, conf, store, model


def test_every_window_kept_once_with_the_model_forward(setup):
    tmp, conf, store, model = setup
    emb = read_embeddings(store)
    done = store.done_table()
    assert len(emb) == done["windows"].sum() > 0
    rows = emb.rows.to_pandas()
    assert not rows.duplicated(["recording_id", "start_sample", "model_id"]).any()
    assert set(rows["model_id"]) == set(done["model_id"]) and set(rows["settings_hash"]) == set(done["settings_hash"])
    loaded = load_checkpoint(model)
    assert emb.vectors.dtype == np.float16 and emb.vectors.shape[1] == loaded.embedding_size
    # partitioned like the detections: by site and the window's UTC date (the dump crosses midnight)
    assert set(rows["date"]) == {"2024-05-01", "2024-05-02"}
    det = store.read_detections()
    assert set(zip(rows["recording_id"], rows["start_sample"])) == set(zip(det["recording_id"], det["start_sample"]))
    # the vector is the model's embedding of that window
    first = rows.iloc[0]
    path = done.set_index("recording_id").loc[first["recording_id"], "path"]
    import soundfile as sf
    import torch

    audio, _sr = sf.read(path, start=int(first["start_sample"]), frames=loaded.window_samples, dtype="float32")
    want = loaded.forward(torch.from_numpy(audio[None, :])).embeddings[0].detach().numpy()
    np.testing.assert_allclose(emb.vectors[0].astype(np.float32), want, rtol=2e-2, atol=2e-2)


def test_embeddings_are_committed_with_their_detections_and_done_rows(setup):
    _, _, store, _ = setup
    log = store.results_dir / "_delta_log"
    versions_with = {"embedding": set(), "done": set(), "detection": set()}
    for f in sorted(log.glob("*.json")):
        for line in f.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                versions_with[action["add"]["partitionValues"]["kind"]].add(f.name)
    assert versions_with["embedding"] and versions_with["embedding"] == versions_with["done"]


def test_rerun_adds_nothing(setup):
    tmp, conf, store, _ = setup
    before = store.snapshot().version()
    report = scan_and_detect(tmp / "dump", store, conf)
    assert report.recordings_done == 0
    assert store.snapshot().version() == before


def test_files_written_the_old_way_read_the_same(setup, tmp_path):
    """pam writes the embedding column plain and uncompressed, which is read straight from the
    pages; files an older pam wrote (zstd, dictionaries) read the same through pyarrow."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pam.store.embedding_pages import read_vectors
    from pam.store.embeddings import embedding_files

    _, _, store, _ = setup
    new = read_embeddings(store)
    paths = [store.results.full_path(f.path) for f in embedding_files(store)]
    for path in paths:
        with pa.memory_map(path) as source:
            assert read_vectors(source, pq.ParquetFile(source)) is not None  # the fast path is the one taken
    old_store = Store(tmp_path / "store")
    shutil.copytree(store.root, old_store.root)
    for f in embedding_files(old_store):
        path = old_store.results.full_path(f.path)
        pq.write_table(pq.read_table(path), path, compression="zstd")  # same rows, the old layout
        with pa.memory_map(path) as source:
            assert read_vectors(source, pq.ParquetFile(source)) is None
    old = read_embeddings(old_store)
    assert old.rows.equals(new.rows)
    assert np.array_equal(old.vectors.view(np.uint16), new.vectors.view(np.uint16))
    some = sorted(set(new.rows.column("recording_id").to_pylist()))[:1]
    one_old, one_new = read_embeddings(old_store, recording_ids=some), read_embeddings(store, recording_ids=some)
    assert len(one_new) and one_old.rows.equals(one_new.rows)
    assert np.array_equal(one_old.vectors.view(np.uint16), one_new.vectors.view(np.uint16))


def test_string_columns_constant_in_a_file_are_taken_from_its_statistics(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pam.store.embeddings import constant_strings

    table = pa.table({"model_id": ["m"] * 6, "run_id": ["r1", "r1", "r1", "r2", "r2", "r2"],
                      "settings_hash": ["k", "k", "k", None, "k", "k"], "recording_id": ["a"] * 6})
    pq.write_table(table, tmp_path / "f.parquet", row_group_size=3)
    constant = constant_strings(pq.ParquetFile(tmp_path / "f.parquet"), table.column_names)
    # run_id is constant within each row group but not across them; settings_hash has a null
    assert constant == {"model_id": "m", "recording_id": "a"}
    pq.write_table(table, tmp_path / "plain.parquet", write_statistics=False)
    assert constant_strings(pq.ParquetFile(tmp_path / "plain.parquet"), table.column_names) == {}
