"""Hyperparameter search: train one config under several settings, keep the best by validation.

The settings come from the config's ``search`` section (a grid, or a seeded random draw from
it). Each trial is an ordinary training run in its own folder under the search folder, so a
trial can be inspected, resumed or rerun alone; the winner (highest validation AP, or lowest
validation loss) is then calibrated, evaluated and exported like any run. The test split
never takes part in the choice.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

import pandas as pd

from pam.train.config import TrainConfig, search_settings, with_settings
from pam.train.run import Log, prepare_data, train_model

SEARCH_COLUMNS = ["trial", "settings_json", "run_dir", "device", "best_epoch", "epochs_run", "val_ap",
                  "val_loss", "seconds"]


def search_dir(conf: TrainConfig) -> Path:
    return Path(conf.output.dir) / f"{conf.output.name or 'train'}-search-{conf.fingerprint()}"


def trial_devices(device: str, max_parallel: int) -> list[str]:
    """One device per parallel slot: the GPUs in turn when there are several, else the one asked for."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1:
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(max_parallel)]
    return [device] * max_parallel


def plan_trials(conf: TrainConfig, root: Path | None = None) -> list[dict]:
    """``[{trial, settings, config (plain dict), run_dir, device}]`` for every setting to try."""
    root = root or search_dir(conf)
    if not conf.search.space:
        raise ValueError("search.space is empty: name at least one key and its values to try")
    settings = search_settings(conf)
    devices = trial_devices(conf.train.device, conf.search.max_parallel)
    trials = []
    for k, s in enumerate(settings):
        trial_conf = with_settings(conf, {**s, "train.device": devices[k % len(devices)]}, source=f"search trial {k}")
        trials.append({"trial": k, "settings": s, "config": trial_conf.plain(),
                       "run_dir": str(root / f"trial-{k:03d}-{trial_conf.fingerprint()}"),
                       "device": trial_conf.train.device})
    return trials


def run_trial(trial: dict, progress: bool = False, log: Log = print) -> dict:
    """Prepare and train one trial (resumable); its validation scores."""
    conf = TrainConfig.model_validate(trial["config"])
    prepare_data(conf, trial["run_dir"], log)
    result = train_model(trial["run_dir"], progress=progress, log=log)
    return {"trial": trial["trial"], "settings_json": json.dumps(trial["settings"], sort_keys=True),
            "run_dir": trial["run_dir"], "device": trial["device"], "best_epoch": result["best_epoch"],
            "epochs_run": result["epochs_run"], "val_ap": result["val_ap"], "val_loss": result["best_val_loss"],
            "seconds": result["seconds"]}


def pick_best(results: list[dict], metric: str = "val_ap") -> dict:
    """Highest validation AP (or lowest loss); ties go to the earlier trial."""
    def key(r: dict) -> float:
        v = r.get(metric)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return math.inf
        return -v if metric == "val_ap" else v

    if not results:
        raise ValueError("no trial finished")
    return min(results, key=lambda r: (key(r), r["trial"]))


def write_table(results: list[dict], root: Path, best: dict) -> Path:
    frame = pd.DataFrame(results, columns=SEARCH_COLUMNS).sort_values("trial")
    frame["best"] = frame["trial"] == best["trial"]
    root.mkdir(parents=True, exist_ok=True)
    path = root / "search.parquet"
    frame.to_parquet(path, index=False)
    (root / "search.md").write_text(_markdown(frame))
    return path


def _markdown(frame: pd.DataFrame) -> str:
    lines = ["| trial | settings | best epoch | val AP | val loss | s |", "| --- | --- | --- | --- | --- | --- |"]
    for r in frame.to_dict("records"):
        mark = " **(best)**" if r["best"] else ""
        ap = "–" if r["val_ap"] is None or r["val_ap"] != r["val_ap"] else f"{r['val_ap']:.3f}"
        loss = "–" if r["val_loss"] is None or r["val_loss"] != r["val_loss"] else f"{r['val_loss']:.4f}"
        lines.append(f"| {r['trial']}{mark} | `{r['settings_json']}` | {r['best_epoch']} of {r['epochs_run']} | "
                     f"{ap} | {loss} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def run_search(conf: TrainConfig, root: str | os.PathLike | None = None, progress: bool = False,
               log: Log = print, runner: Callable[[list[dict]], list[dict]] | None = None) -> dict:
    """Plan, run every trial (``runner`` maps them; default: one after another), pick the best."""
    root = Path(root) if root is not None else search_dir(conf)
    trials = plan_trials(conf, root)
    log(f"search: {len(trials)} trial(s) in {root}")
    results = runner(trials) if runner else [run_trial(t, progress, log) for t in trials]
    best = pick_best(results, conf.search.metric)
    table = write_table(results, root, best)
    log(f"best trial {best['trial']}: {best['settings_json']} ({conf.search.metric} "
        f"{best[conf.search.metric]}); table {table}")
    return {"root": str(root), "table": str(table), "best": best, "results": results}
