"""Models as a contract: a model of 6,522 classes runs through the whole path, and several
models share one night (decoded once per sample rate, each work key committed once)."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import torch

import pam.detect.catalog as catalog
import pam.detect.dataset
from models import every_window_model
from pam.config import ConfigError, DetectConfig, PamConfig, RetriesConfig, load_config
from pam.detect.checkpoint import load_checkpoint
from pam.detect.contract import ModelError, TorchModel, class_table
from pam.detect.detection import run_detection
from pam.detect.windows import window_count
from pam.io.manifest import scan
from pam.ops.pipeline import run_nightly
from pam.store.store import Store
from synth import noise, write_wav

WIDE = 6522
EVERY = 1000  # the wide model fires on classes 0, 1000, ..., 6000 in every window: 7 per window


class FixedScores(torch.nn.Module):
    """Scores 0.9 on every EVERY-th class and 0.1 elsewhere, and an 8-d embedding, for any audio."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.full((audio.shape[0], self.classes), 0.1, device=audio.device)
        scores[:, ::EVERY] = 0.9
        return scores, audio[:, :8] * 0 + audio.abs().mean(dim=1, keepdim=True)


def wide_model(rate: int = 16000, model_id: str = "wide00000000000a", classes: int = WIDE) -> TorchModel:
    return TorchModel(FixedScores(classes), model_id=model_id, name=f"wide-{rate}", sample_rate=rate, window_s=3.0,
                      classes=[f"Genus{c}_species{c}" for c in range(classes)],
                      scientific_names=[f"Genus{c} species{c}" for c in range(classes)],
                      common_names=[f"Bird {c}" for c in range(classes)], embedding_size=8,
                      source="tests", licence="CC0")


def make_dump(root, n=4, rate=16000):
    for i in range(n):
        start = datetime(2024, 5, 1, 23, 58, tzinfo=timezone.utc) + timedelta(minutes=i)
        write_wav(root / f"S{i % 2}" / start.strftime("%Y%m%d_%H%M%S.WAV"), noise(2.0 + i, rate, seed=i), rate)
    return root


@pytest.fixture
def loaders(monkeypatch, tmp_path):
    """Short names as a plugged-in model gets them: wide-16k, wide-8k (another rate), every (a checkpoint)."""
    path = every_window_model(tmp_path / "every.pt")
    monkeypatch.setitem(catalog.LOADERS, "wide-16k", lambda: wide_model(16000))
    monkeypatch.setitem(catalog.LOADERS, "wide-8k", lambda: wide_model(8000, "wide8k0000000000"))
    monkeypatch.setitem(catalog.LOADERS, "every", lambda: load_checkpoint(path))
    return path


@pytest.fixture
def reads(monkeypatch):
    """How many times each file is read (spans of pam.detect.dataset.read_span)."""
    counts: Counter = Counter()
    real = pam.detect.dataset.read_span

    def counting(snd, start, frames, channel=None):
        counts[snd.name] += 1
        return real(snd, start, frames, channel)

    monkeypatch.setattr(pam.detect.dataset, "read_span", counting)
    return counts


def config(*models: str) -> PamConfig:
    return PamConfig(models=list(models), detect=DetectConfig(num_workers=0, batch_size=16, flush_every=2),
                     retries=RetriesConfig(count=0, delay_s=0))


def windows_of(store: Store) -> int:
    m = store.read_manifest()
    return sum(window_count(int(f), int(r), 3.0, 1.5) for f, r in zip(m["frames"], m["sample_rate"]))


def test_a_model_of_6522_classes_runs_through_detection_and_summaries(tmp_path, loaders, reads):
    dump = make_dump(tmp_path / "dump")
    store = Store(tmp_path / "store")
    t0 = time.perf_counter()
    _, report = run_nightly([str(dump)], store, config("wide-16k"), progress=False)
    assert time.perf_counter() - t0 < 120  # a loose ceiling: a per-class Python loop would not finish
    windows = windows_of(store)
    det = store.read_detections()
    assert report.detections == len(det) == windows * 7
    assert sorted(det["label"].unique()) == sorted(f"Genus{c}_species{c}" for c in range(0, WIDE, EVERY))
    assert set(det["model_id"]) == {"wide00000000000a"}
    assert det["start_time"].notna().all() and (det["score"] == np.float32(0.9)).all()
    daily = store.read_summary("daily_counts")
    assert daily.groupby("label")["detections"].sum().sum() == windows * 7
    assert len(reads) == 4  # each file read (once: short files are one span)


def test_class_table_and_thresholds_cover_every_class():
    model = wide_model()
    table = class_table(model)
    assert len(table) == WIDE and table[42] == {"label": "Genus42_species42", "scientific_name": "Genus42 species42",
                                                "common_name": "Bird 42", "threshold": 0.5}
    vec = model.threshold_vector({"Genus7_species7": 0.2}, min_score=0.3)
    assert vec.shape == (WIDE,) and vec[7] == np.float32(0.2) and (np.delete(vec, 7) == np.float32(0.3)).all()


def test_two_models_in_one_night_write_each_models_rows_once_and_decode_once(tmp_path, loaders, reads):
    dump = make_dump(tmp_path / "dump")
    store = Store(tmp_path / "store")
    _, report = run_nightly([str(dump)], store, config("every", "wide-16k"), progress=False)
    windows = windows_of(store)
    every_id = load_checkpoint(loaders).model_id
    det = store.read_detections()
    per_model = det.groupby("model_id").size().to_dict()
    assert per_model == {every_id: windows, "wide00000000000a": windows * 7}
    assert report.recordings_done == 4 and report.detections == windows * 8
    done = store.done_table()
    assert sorted(Counter(done["model_id"]).values()) == [4, 4] and not done.duplicated(
        ["recording_id", "model_id", "settings_hash"]).any()
    assert set(reads.values()) == {1}  # both models scored the same decoded windows
    run = store.read_runs().iloc[-1]
    assert run["model_id"] == f"{every_id};wide00000000000a" and run["recordings_done"] == 4

    daily = store.read_summary("daily_counts")  # the summaries count per model
    counted = daily.groupby("model_id")["detections"].sum().to_dict()
    assert counted == {every_id: windows, "wide00000000000a": windows * 7}

    reads.clear()
    _, again = run_nightly([str(dump)], store, config("every", "wide-16k"), progress=False)
    assert again.recordings_done == 0 and again.detections == 0 and again.recordings_skipped == 4
    assert len(store.read_detections()) == len(det) and len(store.done_table()) == len(done)
    assert not reads  # nothing was decoded


def test_a_model_added_later_scores_only_its_own_work(tmp_path, loaders, reads):
    dump = make_dump(tmp_path / "dump")
    store = Store(tmp_path / "store")
    run_nightly([str(dump)], store, config("every"), progress=False)
    first = store.read_detections()
    _, report = run_nightly([str(dump)], store, config("every", "wide-16k"), progress=False)
    det = store.read_detections()
    assert len(det[det["model_id"] != "wide00000000000a"]) == len(first)  # the first model's rows untouched
    assert report.detections == len(det) - len(first) == windows_of(store) * 7
    assert len(store.done_table()) == 8


def test_models_of_two_sample_rates_decode_once_per_rate(tmp_path, loaders, reads):
    dump = make_dump(tmp_path / "dump")
    store = Store(tmp_path / "store")
    _, report = run_nightly([str(dump)], store, config("every", "wide-16k", "wide-8k"), progress=False)
    assert set(reads.values()) == {2}  # 16 kHz for two models, 8 kHz for one
    det = store.read_detections()
    assert det.groupby("model_id").size()["wide8k0000000000"] == windows_of(store) * 7
    assert report.recordings_done == 4


def test_direct_run_detection_takes_a_list_of_models(tmp_path, loaders):
    dump = make_dump(tmp_path / "dump", n=2)
    rows = scan(dump, Store(tmp_path / "s")).rows
    report = run_detection(Store(tmp_path / "s"), rows, [load_checkpoint(loaders), wide_model()],
                           DetectConfig(num_workers=0), progress=False)
    assert report.recordings_done == 2 and ";" in report.model_id


def test_config_takes_model_or_models_not_both(tmp_path):
    assert PamConfig(models=["a.pt", "b.onnx"]).model_specs() == ["a.pt", "b.onnx"]
    assert PamConfig(model="a.pt").model_specs() == ["a.pt"] and PamConfig().model_specs() == [None]
    path = tmp_path / "c.yaml"
    path.write_text("model: a.pt\nmodels: [b.pt]\n")
    with pytest.raises(ConfigError, match="either model .* or models"):
        load_config(path)
    path.write_text("models: [b.pt, b.pt]\n")
    with pytest.raises(ConfigError, match="twice"):
        load_config(path)


def test_unknown_model_names_and_duplicate_models_are_refused(tmp_path, loaders):
    with pytest.raises(ModelError, match="not a model file and not a model name pam knows .*bobwhite-v2"):
        catalog.load_model("birdnet-v9")
    with pytest.raises(ModelError, match="same model"):
        catalog.load_models([str(loaders), "every"])


def test_an_inconsistent_model_is_refused():
    bad = wide_model(classes=3)
    bad.classes = ["a", "b", "a"]
    with pytest.raises(ModelError, match="distinct; repeated: 'a'"):
        bad.check()
    bad = wide_model(classes=3)
    bad.sample_rate = 16000.0
    with pytest.raises(ModelError, match="sample_rate must be a positive whole number"):
        bad.check()
    bad = wide_model(classes=3)
    bad.common_names = ["x"]
    with pytest.raises(ModelError, match="1 common_names for 3 classes"):
        bad.check()


def test_model_ids_load_a_runs_models_once_until_the_file_changes(tmp_path, monkeypatch):
    """plan_agile (the CLI's check before Prefect starts, then the flow's) learns the run's model
    ids through catalog.model_ids: the same file is loaded once per process; a changed file again."""
    path = every_window_model(tmp_path / "m.pt")
    loads = []
    real = catalog.load_models
    monkeypatch.setattr(catalog, "load_models", lambda specs, device="cpu": loads.append(specs) or real(specs, device))
    first = catalog.model_ids([str(path)])
    assert catalog.model_ids([str(path)]) == first == [load_checkpoint(str(path)).model_id] and len(loads) == 1
    every_window_model(path, window_s=2.0, seed=1)  # written again: another model under the same name
    again = catalog.model_ids([str(path)])
    assert len(loads) == 2 and again == [load_checkpoint(str(path)).model_id] != first
