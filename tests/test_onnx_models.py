"""Bring your own model: ONNX files with a card beside them run in the same pipeline; pam's
checkpoints export to ONNX with the same scores; a bad model or card is refused before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from models import every_window_model  # noqa: E402
from pam.cli.main import app  # noqa: E402
from pam.config import DetectConfig  # noqa: E402
from pam.detect.catalog import load_model  # noqa: E402
from pam.detect.checkpoint import load_checkpoint  # noqa: E402
from pam.detect.contract import ModelError  # noqa: E402
from pam.detect.detection import run_detection  # noqa: E402
from pam.detect.onnx_export import export_onnx  # noqa: E402
from pam.io.manifest import scan  # noqa: E402
from pam.store.store import Store  # noqa: E402
from synth import chirp, noise, write_wav  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The bundled model exported once for the module: (checkpoint, onnx path)."""
    folder = tmp_path_factory.mktemp("onnx")
    model = load_checkpoint(None)
    path, card, diff = export_onnx(model, folder / "bobwhite.onnx")
    assert card == folder / "bobwhite.card.yaml" and diff < 1e-4
    return model, path


def calls(rate: int, seconds: float, seed: int) -> np.ndarray:
    audio = noise(seconds, rate, seed=seed)
    for k, at in enumerate(np.arange(0.5, seconds - 1.0, 2.5)):
        i = int(at * rate)
        piece = chirp(0.8, rate, 1200 + 300 * k, 2400 + 300 * k)
        audio[i:i + len(piece)] += piece[: len(audio) - i]
    return audio.astype(np.float32)


def test_an_exported_checkpoint_gives_the_same_scores(exported):
    model, path = exported
    onnx = load_model(str(path))
    assert onnx.sample_rate == model.sample_rate and onnx.window_s == model.window_s
    assert onnx.classes == model.classes and onnx.thresholds == pytest.approx(model.thresholds)
    assert onnx.embedding_size == model.embedding_size == 256
    windows = torch.from_numpy(calls(model.sample_rate, 21.0, seed=3)).unfold(0, model.window_samples, 8000)
    for batch in (windows[:1], windows):  # any batch size
        with torch.inference_mode():
            mine, theirs = model.forward(batch), onnx.forward(batch)
        np.testing.assert_allclose(theirs.scores.numpy(), mine.scores.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(theirs.embeddings.numpy(), mine.embeddings.numpy(), atol=1e-3, rtol=1e-4)
    assert onnx.model_id != model.model_id  # another file, another id


def test_an_onnx_model_runs_in_the_pipeline_like_its_checkpoint(exported, tmp_path):
    model, path = exported
    for i in range(2):
        write_wav(tmp_path / "dump" / "S1" / f"2024050{i + 1}_020000.WAV", calls(16000, 12.0, seed=i), 16000)
    results = {}
    for name, m in (("pt", model), ("onnx", load_model(str(path)))):
        store = Store(tmp_path / name)
        rows = scan(tmp_path / "dump", store).rows
        run_detection(store, rows, m, DetectConfig(num_workers=0, min_score=0.0), progress=False)
        results[name] = store.read_detections().sort_values(["recording_id", "start_sample"]).reset_index(drop=True)
    pt, onnx = results["pt"], results["onnx"]
    assert len(pt) == len(onnx) > 0 and set(onnx["model_id"]) == {load_model(str(path)).model_id}
    assert (pt["start_sample"] == onnx["start_sample"]).all() and (pt["label"] == onnx["label"]).all()
    np.testing.assert_allclose(onnx["score"], pt["score"], atol=1e-4)


def test_export_model_command_writes_the_file_and_its_card(tmp_path):
    ckpt = every_window_model(tmp_path / "every.pt")
    res = runner.invoke(app, ["export-model", str(ckpt), "--out", str(tmp_path / "x" / "every.onnx")])
    assert res.exit_code == 0, res.output
    card = yaml.safe_load((tmp_path / "x" / "every.card.yaml").read_text())
    assert card["labels"] == ["a", "b"] and card["sample_rate"] == 16000 and card["window_s"] == 3.0
    assert card["thresholds"] == {"a": 0.0, "b": 1.0} and "within" in res.output


def write_card(path: Path, **values) -> Path:
    card = {"sample_rate": 16000, "window_s": 3.0, "labels": ["bobwhite_covey"], **values}
    card = {k: v for k, v in card.items() if v is not None}
    card_path = path.with_name(path.stem + ".card.json")
    card_path.write_text(json.dumps(card))
    return card_path


@pytest.mark.parametrize("change, message", [
    ({"sample_rate": "16k"}, "sample_rate must be a positive whole number of Hz, got '16k'"),
    ({"sample_rate": 16000.0}, "sample_rate must be a positive whole number of Hz"),
    ({"labels": ["a", "b"]}, "the card lists 2 labels but the model's first output has shape [1, 1]"),
    ({"window_s": 2.0}, "the model takes 48000 samples per window but the card says 2.0 s"),
    ({"labels": None}, "the card has no labels"),
    ({"thresholds": {"nope": 0.5}}, "thresholds name classes the model does not have: 'nope'"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"outputs": "probits"}, "outputs must be 'scores'"),
])
def test_a_bad_card_is_refused_in_one_line(exported, tmp_path, change, message):
    path = tmp_path / "m.onnx"
    path.write_bytes(exported[1].read_bytes())
    write_card(path, **change)
    with pytest.raises(ModelError) as err:
        load_model(str(path))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_corrupt_and_cardless_models_are_refused(exported, tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        load_model(str(tmp_path / "absent.onnx"))
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(exported[1].read_bytes())
    with pytest.raises(ModelError, match=r"no card beside it \(bare.card.yaml"):
        load_model(str(bare))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 50)
    write_card(junk)
    with pytest.raises(ModelError, match="not a loadable ONNX model"):
        load_model(str(junk))


def test_a_card_with_logits_and_one_threshold(exported, tmp_path):
    path = tmp_path / "l.onnx"
    path.write_bytes(exported[1].read_bytes())
    write_card(path, outputs="logits", thresholds=0.7, common_names=["Northern Bobwhite"], licence="MIT")
    model = load_model(str(path))
    assert model.thresholds == {"bobwhite_covey": 0.7} and model.common_names == ["Northern Bobwhite"]
    out = model.forward(torch.zeros(2, 48000)).scores
    assert ((out > 0.5) & (out < 0.74)).all()  # sigmoid of a score in [0, 1]


def test_detect_refuses_a_bad_onnx_model_before_any_work(exported, tmp_path):
    write_wav(tmp_path / "dump" / "S1" / "20240501_020000.WAV", noise(4.0, 16000), 16000)
    path = tmp_path / "m.onnx"
    path.write_bytes(exported[1].read_bytes())
    write_card(path, labels=["a", "b", "c"])
    store = tmp_path / "store"
    res = runner.invoke(app, ["detect", str(tmp_path / "dump"), "--store", str(store), "--model", str(path),
                              "--model", str(exported[1]), "--no-prefect"])
    assert res.exit_code == 2 and "the card lists 3 labels" in res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) == 1
    assert not store.exists()
