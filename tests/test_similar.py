"""pam similar: the stored windows nearest to an example call, from the store's embeddings,
with the planted neighbour first, filters by site, and a listing `pam review --from` cuts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from typer.testing import CliRunner

from models import every_window_model
from pam.analysis.similar import similar
from pam.analysis.store_index import update_index
from pam.cli.main import app
from pam.config import DetectConfig, PamConfig, RetriesConfig
from pam.store.store import Store
from pamstore import scan_and_detect
from synth import chirp, noise, write_wav

RATE = 16000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("similar")
    call = chirp(3.0, RATE)
    write_wav(tmp / "call.wav", call, RATE)
    paths = []
    for i in range(4):
        start = datetime(2024, 5, 1, 5, 0, tzinfo=timezone.utc) + timedelta(minutes=i)
        audio = noise(7.5, RATE, seed=i)
        if i == 0:  # the call itself at site S0, 0-3 s
            audio[:len(call)] = call
        if i == 1:  # the call under a little noise at site S1, 0-3 s
            audio[:len(call)] = call + noise(3.0, RATE, level=0.01, seed=9)
        path = tmp / "dump" / f"S{i % 2}" / start.strftime("%Y%m%d_%H%M%S.WAV")
        write_wav(path, audio, RATE)
        paths.append(path)
    model = every_window_model(tmp / "m.pt")
    conf = PamConfig(model=str(model), detect=DetectConfig(num_workers=0, batch_size=4, embeddings=True),
                     retries=RetriesConfig(count=0, delay_s=0))
    store = Store(tmp / "store")
    scan_and_detect(tmp / "dump", store, conf)
    return tmp, store, paths


def test_the_planted_call_comes_first_and_site_filters(setup):
    tmp, store, paths = setup
    res = similar(store, example=tmp / "call.wav", top=5)
    first = res.rows.iloc[0]
    assert (first["recording"], first["start_s"], first["site"]) == (str(paths[0]), 0.0, "S0")
    assert res.rows.iloc[1]["recording"] == str(paths[1]) and res.rows.iloc[1]["start_s"] == 0.0
    assert list(res.rows["similarity"]) == sorted(res.rows["similarity"], reverse=True)
    assert first["end_s"] == 3.0 and first["start_time"].startswith("2024-05-01T05:00:00.000")
    only = similar(store, example=tmp / "call.wav", top=5, sites=["S1"])
    assert set(only.rows["site"]) == {"S1"} and len(only.rows) == 5
    assert (only.rows.iloc[0]["recording"], only.rows.iloc[0]["start_s"]) == (str(paths[1]), 0.0)


def test_a_stored_window_as_example(setup):
    tmp, store, paths = setup
    res = similar(store, at=f"{paths[0]}@1.0", top=3)
    assert res.rows.iloc[0]["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert (res.rows.iloc[1]["recording"], res.rows.iloc[1]["start_s"]) == (str(paths[1]), 0.0)


def test_index_update_is_incremental(setup):
    _tmp, store, _paths = setup
    update = update_index(store, similar(store, at=f"{_paths[0]}@1.0", top=1).model_id)
    assert update.added == 0 and update.windows_read == 0 and update.files_read == 0  # nothing new to read
    assert len(update.index) == len(store.read_detections().drop_duplicates(["recording_id", "start_sample"]))


def test_cli_lists_writes_and_review_cuts_the_clips(setup):
    tmp, store, paths = setup
    listing = tmp / "similar.csv"
    r = CliRunner().invoke(app, ["similar", str(store.root), "--example", str(tmp / "call.wav"), "--top", "4",
                                 "--label", "chirp", "--out", str(listing)])
    assert r.exit_code == 0, r.output
    rows = pd.read_csv(listing)
    assert len(rows) == 4 and set(rows["species"]) == {"chirp"} and rows.iloc[0]["recording"] == str(paths[0])
    r = CliRunner().invoke(app, ["review", str(store.root), "--from", str(listing), "--out", str(tmp / "rev")])
    assert r.exit_code == 0, r.output
    review = pd.read_csv(tmp / "rev" / "review.csv")
    assert len(review) == 4 and all((tmp / "rev" / c).is_file() for c in review["clip"])
    assert set(zip(review["recording"], review["peak_start_s"])) == set(zip(rows["recording"], rows["start_s"]))
    bad = CliRunner().invoke(app, ["similar", str(store.root), "--at", "nowhere.wav@3"])
    assert bad.exit_code != 0 and "no stored windows" in bad.output
