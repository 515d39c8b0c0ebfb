"""A whole training run on tiny synthetic data: files written, resumable, calibrated model used by detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pam.detect.checkpoint import load_checkpoint
from pam.config import ConfigError, DetectConfig
from pam.detect.settings import DetectSettings
from pam.detect.registry import read_models
from pam.train.config import load_train_config
from pam.train.run import RunError, prepare_data, read_split, run_training, train_model

from train_data import tiny_config, write_backgrounds, write_clip_set


def quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, dict, Path]:
    folder = tmp_path_factory.mktemp("train")
    write_clip_set(folder, 40, classes=("chirp", "tone"))
    write_backgrounds(folder / "bg")
    cfg = tiny_config(folder, data__backgrounds=["bg"], split__test_fraction=0.25, train__epochs=3,
                      output__store="store", output__export="exported/model.pt")
    result = run_training(load_train_config(cfg), progress=False, log=quiet)
    return folder, result, cfg


def test_run_folder_holds_every_output(finished) -> None:
    folder, result, _ = finished
    run = Path(result["run_dir"])
    assert run.parent == folder / "runs"
    for name in ("config.yaml", "split.csv", "data.json", "history.parquet", "learning_curve.png",
                 "calibration.json", "model.pt", "checkpoints/last.pt", "checkpoints/best.pt",
                 "evaluation/val.parquet", "evaluation/val.md", "evaluation/test.parquet", "evaluation/test.md",
                 "evaluation/report.md"):
        assert (run / name).is_file(), name
    assert (run / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = pd.read_parquet(run / "history.parquet")
    assert history["epoch"].tolist() == [1, 2, 3] and history[["train_loss", "val_loss"]].notna().all().all()
    clips, splits = read_split(run)
    assert len(clips) == 40 and set(splits) == {"train", "val", "test"}
    sides: dict[str, set] = {}
    for c, s in zip(clips, splits):
        sides.setdefault(c.recording, set()).add(s)
    assert all(len(v) == 1 for v in sides.values())
    report = pd.read_parquet(run / "evaluation" / "test.parquet")
    assert report["class"].tolist() == ["chirp", "tone", "macro"]
    assert "| **macro** |" in (run / "evaluation" / "test.md").read_text()


def test_final_model_carries_calibrated_thresholds_that_detection_uses(finished) -> None:
    folder, result, _ = finished
    run = Path(result["run_dir"])
    model = load_checkpoint(run / "model.pt")
    calibration = json.loads((run / "calibration.json").read_text())
    assert model.card.classes == ["chirp", "tone"]
    assert model.card.thresholds == {c: pytest.approx(v["threshold"]) for c, v in calibration.items()}
    # pam detect reads the thresholds from the card, unchanged.
    settings = DetectSettings.from_config(DetectConfig(), model)
    assert settings.thresholds == pytest.approx(model.card.thresholds)
    assert settings.window_s == 0.5
    assert model.card.training["data_fingerprint"] == json.loads((run / "data.json").read_text())["data_fingerprint"]
    assert set(model.card.metrics) >= {"val", "test", "calibration"}
    assert (folder / "exported" / "model.pt").read_bytes() == (run / "model.pt").read_bytes()


def test_model_is_registered_once_with_its_provenance(finished) -> None:
    folder, result, cfg = finished
    models = read_models(folder / "store")
    assert len(models) == 1
    row = models.iloc[0]
    assert row["model_id"] == result["export"]["model_id"]
    assert json.loads(row["classes_json"]) == ["chirp", "tone"]
    assert json.loads(row["config_json"])["model"]["name"] == "tiny"
    assert row["data_fingerprint"] == result["prepare"]["data_fingerprint"]
    assert pd.isna(row["parent_id"])
    # Running the finished config again resumes: nothing is retrained, the model keeps its id.
    again = run_training(load_train_config(cfg), progress=False, log=quiet)
    assert again["train"]["resumed_from"] == 3 and again["export"]["model_id"] == result["export"]["model_id"]
    assert len(read_models(folder / "store")) == 1


def test_fine_tuning_starts_from_the_parent_and_adds_a_class(finished, tmp_path: Path) -> None:
    folder, result, _ = finished
    parent = load_checkpoint(Path(result["run_dir"]) / "model.pt")
    write_clip_set(tmp_path, 12, seed=4, classes=("chirp", "tone", "buzz"))
    cfg = tiny_config(tmp_path, model__start_from=result["export"]["path"], model__name="tuned",
                      train__epochs=1, augment__overlay__p=0.0)
    conf = load_train_config(cfg)
    prepare_data(conf, conf.run_dir(), quiet)
    from pam.train.run import card_and_net

    card, net, parent_id = card_and_net(conf, ["buzz", "chirp", "tone"], quiet)
    assert parent_id == parent.model_id and card.parent_id == parent.model_id
    head, old = net.state_dict()["head.weight"], parent.net.state_dict()["head.weight"]
    assert torch.equal(head[1], old[0]) and torch.equal(head[2], old[1])  # chirp and tone kept
    assert torch.equal(net.state_dict()["stem.0.weight"], parent.net.state_dict()["stem.0.weight"])
    clash = tiny_config(tmp_path, model__start_from=result["export"]["path"], model__width=8)
    with pytest.raises(ConfigError, match="model.width is 8 but the parent"):
        card_and_net(load_train_config(clash), ["chirp"], quiet)


def test_interrupted_training_resumes_from_the_last_epoch(tmp_path: Path) -> None:
    write_clip_set(tmp_path, 16)
    conf = load_train_config(tiny_config(tmp_path, train__epochs=3, augment__overlay__p=0.0, train__ema_decay=0.0))
    run = conf.run_dir()
    prepare_data(conf, run, quiet)

    def crash(row: dict) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(run, progress=False, log=quiet, on_epoch=crash)
    assert not (run / "checkpoints" / "trained.pt").exists()
    result = run_training(conf, progress=False, log=quiet)
    assert result["train"]["resumed_from"] == 2 and result["train"]["epochs_run"] == 3
    # Changing the labelled data under a run folder is refused rather than silently mixed.
    (tmp_path / "labels.csv").write_text((tmp_path / "labels.csv").read_text().replace(",none,", ",chirp,", 1))
    with pytest.raises(RunError, match="labelled data changed"):
        prepare_data(conf, run, quiet)
    fresh = run_training(conf, fresh=True, progress=False, log=quiet)
    assert fresh["train"]["resumed_from"] == 0
    assert np.isfinite(fresh["train"]["best_val_loss"])


def test_recalibration_on_new_site_clips_sets_the_thresholds_calibrate_chooses(finished, tmp_path: Path) -> None:
    from pam.train.calibrate import calibrate
    from pam.train.clips import load_clip_set, load_clip_table
    from pam.train.fit import score_clips
    from pam.train.run import recalibrate

    folder, result, _ = finished
    parent = load_checkpoint(result["export"]["path"])
    clips = load_clip_table(folder / "labels.csv")[:20]
    out = recalibrate(result["export"]["path"], clips, tmp_path / "site.pt", target_precision=0.9, log=quiet)
    model = load_checkpoint(tmp_path / "site.pt")
    data = load_clip_set(clips, parent.card.classes, parent.card.sample_rate)
    expected = calibrate(data.targets, score_clips(parent.net, data, 0.5, hop_s=0.5), parent.card.classes, 0.9)
    assert model.card.thresholds == {c: pytest.approx(v.threshold) for c, v in expected.items()}
    assert model.card.parent_id == parent.model_id == out["parent_id"]
    for (k, a), b in zip(parent.net.state_dict().items(), model.net.state_dict().values()):
        assert torch.equal(a, b), k  # weights unchanged


def test_recalibration_refuses_misspelt_labels_and_keeps_thresholds_of_absent_classes(finished, tmp_path: Path) -> None:
    from dataclasses import replace

    from pam.train.clips import UnknownLabels, load_clip_table
    from pam.train.run import recalibrate

    folder, result, _ = finished
    parent = load_checkpoint(result["export"]["path"])
    clips = load_clip_table(folder / "labels.csv")[:20]
    misspelt = [replace(c, labels=tuple(label.upper() for label in c.labels)) for c in clips]
    with pytest.raises(UnknownLabels, match="none of the 20 clips is labelled with the model's classes"):
        recalibrate(result["export"]["path"], misspelt, tmp_path / "bad.pt", log=quiet)
    assert not (tmp_path / "bad.pt").exists()

    first, *others = parent.card.classes
    only_first = [replace(c, labels=tuple(label for label in c.labels if label == first)) for c in clips]
    lines: list[str] = []
    recalibrate(result["export"]["path"], only_first, tmp_path / "site.pt", log=lines.append)
    model = load_checkpoint(tmp_path / "site.pt")
    for c in others:  # no clip of these classes: their thresholds are not reset to 0.5
        assert model.card.thresholds[c] == pytest.approx(parent.card.thresholds[c])
        assert any(line.startswith(f"{c}: threshold") and "kept" in line for line in lines)



def test_model_card_lists_every_clip_of_the_split(finished) -> None:
    from pam.io.manifest import fingerprint
    from pam.train.clips import load_clip_table
    from pam.train.seen import CLIPS_KEY, seen_in_training

    folder, result, _ = finished
    card = load_checkpoint(result["export"]["path"]).card
    clips, splits = read_split(result["run_dir"])
    record = card.training[CLIPS_KEY]
    assert record["split"] == splits and record["start_s"] == [c.start_s for c in clips]
    assert record["audio"] == [fingerprint(c.path, c.path.stat().st_size) for c in clips]
    table = load_clip_table(folder / "labels.csv")
    items = pd.DataFrame({"path": [str(c.path) for c in table], "start_s": [c.start_s for c in table],
                          "end_s": [c.end_s for c in table]})
    seen = seen_in_training(record, items)
    assert seen.per_split == {s: splits.count(s) for s in ("train", "val", "test")}
    assert seen.seen == splits.count("train") + splits.count("val") < len(table)


def test_backfill_writes_the_clip_list_of_an_older_card_beside_it(finished, tmp_path: Path) -> None:
    from pam.detect.checkpoint import ModelError, model_id_of, save_checkpoint
    from pam.train.backfill import main as backfill_main
    from pam.train.backfill import write_clip_list
    from pam.train.clip_sidecar import read_sidecar, sidecar_path
    from pam.train.clips import load_clip_table
    from pam.train.run import recalibrate
    from pam.train.seen import CLIPS_KEY, listed_clips

    folder, result, _ = finished
    model = load_checkpoint(result["export"]["path"])
    listed = model.card.training.pop(CLIPS_KEY)
    save_checkpoint(tmp_path / "old.pt", model.net, model.card, created_at=model.created_at)
    before = (tmp_path / "old.pt").read_bytes()
    old_id = model_id_of(tmp_path / "old.pt")
    assert listed_clips(load_checkpoint(tmp_path / "old.pt")) is None
    assert backfill_main([str(tmp_path / "old.pt")]) == 0
    # the checkpoint is not rewritten, so its model id stays; the list lies beside it, naming that id
    assert (tmp_path / "old.pt").read_bytes() == before and model_id_of(tmp_path / "old.pt") == old_id
    assert sidecar_path(tmp_path / "old.pt") == tmp_path / "old.clips.json"
    assert listed_clips(load_checkpoint(tmp_path / "old.pt")) == listed == read_sidecar(tmp_path / "old.pt", old_id)
    assert f'"model_id": "{old_id}"' in (tmp_path / "old.clips.json").read_text()
    # a model recalibrated from it has the same weights and clips: its own card lists them
    clips = load_clip_table(folder / "labels.csv")[:20]
    recalibrate(tmp_path / "old.pt", clips, tmp_path / "site.pt", log=quiet)
    assert load_checkpoint(tmp_path / "site.pt").card.training[CLIPS_KEY] == listed
    with pytest.raises(ModelError, match="already lists its clips"):
        write_clip_list(result["export"]["path"])
    # another model under the old file name: the sidecar names the old id and is refused
    model.card.training["data_fingerprint"] = "0123456789abcdef"
    save_checkpoint(tmp_path / "old.pt", model.net, model.card)
    with pytest.raises(ModelError, match=f"lists the clips of model {old_id}, not of old.pt"):
        listed_clips(load_checkpoint(tmp_path / "old.pt"))
    # and the list cannot be rebuilt for it: the data fingerprint differs, nothing is written
    sidecar_path(tmp_path / "old.pt").unlink()
    with pytest.raises(ModelError, match="not the card's 0123456789abcdef"):
        write_clip_list(tmp_path / "old.pt")
    assert not sidecar_path(tmp_path / "old.pt").exists()