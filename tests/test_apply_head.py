"""pam apply-head: a head scores the stored embeddings and commits its detections as a model of
its own, exactly once, reading no audio file; a second run adds nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from inotify import Opens
from models import every_window_model
from pam.cli.main import app
from pam.config import DetectConfig, PamConfig, RetriesConfig
from pam.store.embeddings import read_embeddings
from pam.store.store import Store
from pam.train.apply_head import apply_head
from pam.train.heads import Head, HeadCard
from pamstore import scan_and_detect
from synth import noise, write_wav


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("apply")
    sites = []
    for i in range(4):
        start = datetime(2024, 5, 1, 23, 59, tzinfo=timezone.utc) + timedelta(minutes=i)
        site = tmp / "dump" / f"S{i % 2}"
        sites.append(site)
        write_wav(site / start.strftime("%Y%m%d_%H%M%S.WAV"), noise(6.0, 16000, seed=i), 16000)
    model = every_window_model(tmp / "m.pt")
    conf = PamConfig(model=str(model), detect=DetectConfig(num_workers=0, batch_size=4, embeddings=True),
                     retries=RetriesConfig(count=0, delay_s=0))
    store = Store(tmp / "store")
    scan_and_detect(tmp / "dump", store, conf)
    emb = read_embeddings(store)
    model_id = emb.rows.column("model_id")[0].as_py()
    # a head whose one class fires on about half the windows: weights along the first principal direction
    x = emb.vectors.astype(np.float32)
    direction = np.linalg.svd(x - x.mean(0), full_matrices=False)[2][0]
    bias = -float(np.median(x @ direction))
    head = Head(HeadCard(embedding_model_id=model_id, embedding_dim=x.shape[1], classes=("quail",),
                         thresholds={"quail": 0.5}),
                {"w1": direction[:, None].astype(np.float16).astype(np.float32), "b1": np.array([bias], np.float32)})
    path = head.save(tmp / "quail.npz")
    return tmp, store, head, path, emb, sorted(set(sites))


def expected_calls(head: Head, emb) -> set[tuple[str, int]]:
    z = emb.vectors.astype(np.float32) @ head.weights["w1"][:, 0] + head.weights["b1"][0]
    hit = 1 / (1 + np.exp(-z)) >= head.card.thresholds["quail"]
    rows = emb.rows.to_pandas()
    return set(zip(rows["recording_id"][hit], rows["start_sample"][hit]))


def test_apply_head_writes_its_calls_once_and_reads_no_audio(setup):
    tmp, store, head, path, emb, sites = setup
    want = expected_calls(head, emb)
    assert 0 < len(want) < len(emb)
    with Opens([tmp / "dump"] + sites) as opens:
        report = apply_head(store, path, windows_per_commit=10)  # several commits
        assert opens.files() == []  # not one audio file opened
        sf.info(str(next(sites[0].iterdir())))  # the counter does see opens
        assert len(opens.files()) >= 1
    assert report.recordings_done == 4 and report.windows == len(emb) and len(report.commits) >= 2
    det = store.read_detections()
    mine = det[det["model_id"] == head.head_id]
    assert set(zip(mine["recording_id"], mine["start_sample"])) == want
    assert len(mine) == len(want) and set(mine["label"]) == {"quail"}
    # times, paths and partitions as the source model's detections of the same windows
    source = det[det["model_id"] != head.head_id].set_index(["recording_id", "start_sample"])
    joined = mine.merge(source.reset_index(), on=["recording_id", "start_sample"], suffixes=("", "_src"))
    for col in ("path", "start_s", "end_s", "start_time", "site", "date", "device"):
        assert (joined[col].fillna("-") == joined[f"{col}_src"].fillna("-")).all(), col
    done = store.done_table(model_id=head.head_id)
    assert len(done) == 4 and done["detections"].sum() == len(want)


def test_second_run_adds_nothing(setup):
    tmp, store, head, path, emb, _ = setup
    before = store.snapshot().version()
    res = CliRunner().invoke(app, ["apply-head", str(store.root), str(path)])
    assert res.exit_code == 0, res.output
    assert "0 recording(s) scored" in res.output and "4 already done" in res.output
    assert store.snapshot().version() == before


def test_a_head_of_another_model_is_refused_in_one_line(setup, tmp_path):
    _, store, head, _path, _emb, _ = setup
    other = Head(HeadCard(embedding_model_id="birdnet-2.4", embedding_dim=1024, classes=("x",), thresholds={"x": 0.5}),
                 {"w1": np.zeros((1024, 1), np.float32), "b1": np.zeros(1, np.float32)})
    res = CliRunner().invoke(app, ["apply-head", str(store.root), str(other.save(tmp_path / "other.npz"))])
    assert res.exit_code == 2 and "no windows of model birdnet-2.4" in res.output
