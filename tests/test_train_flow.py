"""The training commands and flows: `pam train` (both ways), `pam models`, `pam search`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pam.detect.checkpoint import load_checkpoint
from pam.cli.main import app

from train_data import tiny_config, write_clip_set


def test_train_command_without_prefect_then_models(tmp_path: Path) -> None:
    write_clip_set(tmp_path, 16)
    cfg = tiny_config(tmp_path, train__epochs=1, augment__overlay__p=0.0, output__store="store")
    result = CliRunner().invoke(app, ["train", str(cfg), "--no-prefect", "--no-progress", "--set", "split.seed=3"])
    assert result.exit_code == 0, result.output
    assert "val macro AP: " in result.output and "kept epoch 1 of 1" in result.output
    listing = CliRunner().invoke(app, ["models", str(tmp_path / "store")])
    assert listing.exit_code == 0, listing.output
    model_id = next(p for p in (tmp_path / "store" / "models").iterdir()).stem.removeprefix("model-")
    assert model_id in listing.output.replace("\n", "")
    bad = CliRunner().invoke(app, ["train", str(cfg), "--no-prefect", "--set", "train.device=gpu"])
    assert bad.exit_code == 2 and "train.device: got 'gpu'" in bad.output
    empty = CliRunner().invoke(app, ["models", str(tmp_path)])
    assert empty.exit_code == 0 and "no models registered" in empty.output


@pytest.mark.prefect
def test_training_flow_and_search_flow(tmp_path: Path, prefect_harness) -> None:
    from flows.train import search, train_flow
    from pam.train.config import load_train_config

    write_clip_set(tmp_path, 16)
    conf = load_train_config(tiny_config(tmp_path, train__epochs=1, augment__overlay__p=0.0))
    result = train_flow(conf.plain(), str(conf.run_dir()), progress=False)
    model = load_checkpoint(result["export"]["path"])
    assert model.model_id == result["export"]["model_id"] and set(model.card.thresholds) == {"chirp"}
    assert result["train"]["epochs_run"] == 1 and "val" in result["evaluate"]

    grid = load_train_config(tiny_config(tmp_path, train__epochs=1, augment__overlay__p=0.0,
                                         search__space={"train.lr": [0.001, 0.01]}, search__max_parallel=2))
    found = search(grid.plain())
    table = pd.read_parquet(found["table"])
    assert sorted(table["trial"]) == [0, 1] and table["best"].sum() == 1
    assert [json.loads(s)["train.lr"] for s in table.sort_values("trial")["settings_json"]] == [0.001, 0.01]
    best = table[table["best"]].iloc[0]
    assert best["val_ap"] == table["val_ap"].max()
    assert Path(found["export"]["path"]).parent == Path(best["run_dir"])


def test_models_describes_the_bundled_model_from_its_card(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    import pam.store

    bundled = load_checkpoint()
    store = pam.store.open(tmp_path / "store").ensure()
    now = datetime.now(timezone.utc)
    for i, model_id in enumerate([bundled.model_id, "0123456789abcdef"]):
        store.write_run({"run_id": f"20240501T000000Z-{i:04x}", "flow": "detect", "status": "completed",
                         "started_at": now, "model_id": model_id})
    listing = CliRunner().invoke(app, ["models", str(store.root)], env={"COLUMNS": "400"})
    assert listing.exit_code == 0, listing.output
    [line] = [row for row in listing.output.splitlines() if bundled.model_id in row]
    cells = [c.strip() for c in line.strip("│ ").split("│")]
    card = bundled.card
    [(cls, threshold)] = card.thresholds.items()
    assert cells[:5] == [bundled.model_id, f"{card.name} (bundled)", ", ".join(card.classes), f"{cls} {threshold:.3f}",
                         f"not registered, created {bundled.created_at:%Y-%m-%d %H:%M}"]
    assert cells[6] == f"{card.metrics['val']['macro']['ap']:.3f}" and cells[8] == str(bundled.path.resolve())
    assert bundled.created_at is not None and bundled.created_at.tzinfo is not None
    [other] = [row for row in listing.output.splitlines() if "0123456789abcdef" in row]
    assert "(not registered)" in other
