"""pam train-head: labels -> the stored embeddings of the labelled windows -> a calibrated head
file and card, without reading audio for the embeddings; clips without stored windows are named."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from models import every_window_model
from pam.cli.main import app
from pam.config import DetectConfig, PamConfig, RetriesConfig
from pam.store.embeddings import read_embeddings
from pam.store.store import Store
from pam.train.head_registry import read_heads
from pam.train.heads import HeadError, load_head
from pam.train.train_head import labelled_windows, load_head_config, train_head_from_store
from pam.train.clips import load_clip_table
from pamstore import scan_and_detect
from synth import chirp, noise, write_wav

RATE = 16000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trainhead")
    rows = []
    for i in range(8):
        start = datetime(2024, 5, 1, 5, 0, tzinfo=timezone.utc) + timedelta(minutes=i)
        audio = noise(7.5, RATE, seed=i)
        audio[:3 * RATE] += chirp(3.0, RATE)
        path = tmp / "dump" / f"S{i % 2}" / start.strftime("%Y%m%d_%H%M%S.WAV")
        write_wav(path, audio, RATE)
        rows += [{"path": str(path), "start_s": 0.2, "end_s": 2.8, "label": "chirp", "site": f"S{i % 2}"},
                 {"path": str(path), "start_s": 4.5, "end_s": 7.5, "label": "none", "site": f"S{i % 2}"}]
    pd.DataFrame(rows).to_csv(tmp / "clips.csv", index=False)
    model = every_window_model(tmp / "m.pt")
    conf = PamConfig(model=str(model), detect=DetectConfig(num_workers=0, batch_size=4, embeddings=True),
                     retries=RetriesConfig(count=0, delay_s=0))
    store = Store(tmp / "store")
    scan_and_detect(tmp / "dump", store, conf)
    config = tmp / "head.yaml"
    config.write_text(yaml.safe_dump({"store": "store", "data": {"tables": ["clips.csv"]},
                                      "split": {"val_fraction": 0.25}, "head": {"kind": "linear",
                                                                                "target_precision": 0.9},
                                      "out": "heads/chirp.npz"}))
    return tmp, store, config


def test_each_clip_gets_the_window_that_overlaps_it_most(setup):
    tmp, store, _config = setup
    model_id = read_embeddings(store).rows.column("model_id")[0].as_py()
    clips = load_clip_table(tmp / "clips.csv")
    x, labels, recordings, sites = labelled_windows(store, model_id, clips)
    assert len(x) == len(clips) == 16 and x.shape[1] > 0
    assert [tuple(lab) for lab in labels] == [c.labels for c in clips] and sites == [c.site for c in clips]
    # the chirp clip 0.2-2.8 s lies in the window at 0 s; the negative 4.5-7.5 s is the window at 4.5 s
    emb = read_embeddings(store, model_id=model_id)
    rows = emb.rows.to_pandas()
    for k in (0, 1):
        want = rows[(rows["recording_id"] == recordings[k]) & (rows["start_s"] == [0.0, 4.5][k])].index[0]
        np.testing.assert_array_equal(x[k], emb.vectors[want])


def test_library_writes_a_calibrated_head_and_card(setup):
    tmp, store, config = setup
    trained = train_head_from_store(load_head_config(config))
    head = load_head(tmp / "heads" / "chirp.npz")
    assert head.head_id == trained.head.head_id and head.card.classes == ("chirp",)
    assert head.card.embedding_model_id == read_embeddings(store).rows.column("model_id")[0].as_py()
    assert trained.card_path.is_file() and sum(trained.split.values()) == 16 and trained.split["val"] > 0
    assert set(head.card.thresholds) == {"chirp"} and "calibration" in head.card.metrics
    # registered in the store it trained from: the id, the model it reads, its training summary
    assert trained.registered and trained.store == str(store.root)
    row = read_heads(store).set_index("head_id").loc[head.head_id]
    assert row["embedding_model_id"] == head.card.embedding_model_id and '"windows": 16' in row["training_json"]
    assert load_head(row["file"]).head_id == head.head_id


def test_clips_without_stored_windows_are_named_in_one_error(setup, tmp_path):
    tmp, store, config = setup
    other = tmp_path / "elsewhere.wav"
    write_wav(other, noise(4.0, RATE), RATE)
    pd.DataFrame([{"path": str(other), "start_s": 0, "end_s": 3, "label": "chirp"}]).to_csv(tmp_path / "c.csv",
                                                                                            index=False)
    model_id = read_embeddings(store).rows.column("model_id")[0].as_py()
    with pytest.raises(HeadError, match=r"1 labelled clip\(s\) have no stored window .*elsewhere.wav@0-3s"):
        labelled_windows(store, model_id, load_clip_table(tmp_path / "c.csv"))


def test_cli_without_prefect(setup):
    tmp, _store, config = setup
    r = CliRunner().invoke(app, ["train-head", str(config), "--no-prefect"])
    assert r.exit_code == 0, r.output
    assert "16 labelled windows" in r.output and "registered in" in r.output
    head_id = r.output.split("head ", 1)[1].split()[0]
    assert f"pam apply-head {tmp / 'store'} {head_id}" in r.output.replace("\n", "")
    bad = tmp / "bad.yaml"
    bad.write_text(yaml.safe_dump({"store": "store", "data": {"tables": ["clips.csv"]}, "out": "h.npz",
                                   "head": {"kind": "forest"}}))
    r = CliRunner().invoke(app, ["train-head", str(bad), "--no-prefect"])
    assert r.exit_code != 0 and "kind" in r.output
