"""The stages of a training run, each reading and writing files in one run folder.

``prepare_data -> train_model -> calibrate_model -> evaluate_model -> export_model``; the
Prefect flow (``flows/train.py``) calls each as a task, ``run_training`` calls them in a row.
Stages pass the run folder, never arrays, so any stage can be rerun alone. The run folder::

    config.yaml             the validated config, paths made absolute
    split.csv               every clip and its split (train / val / test): the split, reproducible
    data.json               classes, counts per split, site and class, the data fingerprint
    checkpoints/last.pt     full training state after the last finished epoch (resume)
    checkpoints/best.pt     the best state so far (lowest validation loss; train.keep: best only)
    checkpoints/trained.pt  the trained network as a pam checkpoint, before calibration
    history.parquet         one row per epoch: training and validation loss and AP, lr, time
    learning_curve.png      the same, drawn
    calibration.json        each class's threshold and how it was chosen
    evaluation/             val / test reports (.parquet, .md, per-clip scores), report.md
    model.pt                the final model: weights, calibrated thresholds, metrics, provenance
                            (its card lists every clip of the split, by content: pam.train.seen)

Rerunning a config resumes in the same folder: the split is read back, training continues
after the last finished epoch, and the later stages are redone (they are cheap).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import yaml

from pam import __version__
from pam.detect.checkpoint import LoadedModel, ModelError, load_checkpoint, save_checkpoint
from pam.config import ConfigError
from pam.detect.model import Architecture, ModelCard, PamNet, SpectrogramSettings
from pam.train.calibrate import calibrate
from pam.train.clips import ClipSet, LabelledClip, classes_of, load_audio, load_clip_set, require_known_labels
from pam.train.config import ModelSection, SpectrogramSection, TrainConfig
from pam.train.curves import plot_learning_curve
from pam.train.evaluate import evaluate_clip_set, macro_ap, write_report, to_markdown
from pam.train.fit import FitConfig, fit, resolve_device
from pam.train.labels import background_files, load_sources
from pam.train.seen import CLIPS_KEY, clip_record, listed_clips
from pam.train.split import SPLITS, assign_splits
from pam.train.split_file import RunError, clip_key, counts, data_fingerprint, read_split, write_split

Log = Callable[[str], None]


# ---------------------------------------------------------------- config and folders

def save_config(conf: TrainConfig, run_dir: Path) -> None:
    path = run_dir / "config.yaml"
    if path.is_file():
        old = TrainConfig.model_validate(yaml.safe_load(path.read_text()))
        if old.fingerprint() != conf.fingerprint():
            raise RunError(f"{run_dir}: this run folder holds a run of another config; use another folder "
                           "or --fresh to start over")
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(conf.plain(), sort_keys=False))


def read_config(run_dir: str | os.PathLike) -> TrainConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise RunError(f"{run_dir}: not a training run folder (no config.yaml; run prepare_data first)")
    return TrainConfig.model_validate(yaml.safe_load(path.read_text()))


RUN_OUTPUTS = ("config.yaml", "split.csv", "data.json", "checkpoints", "history.parquet", "learning_curve.png",
               "calibration.json", "evaluation", "model.pt")


def clear_run(run_dir: Path) -> None:
    """Remove what a run wrote (only pam's own files and folders) so it starts over."""
    for name in RUN_OUTPUTS:
        p = run_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


# ---------------------------------------------------------------- model card

def _spectrogram(s: SpectrogramSection) -> SpectrogramSettings:
    return SpectrogramSettings(**s.model_dump())


def _architecture(m: ModelSection) -> Architecture:
    return Architecture(width=m.width, stages=m.stages, blocks_per_stage=m.blocks_per_stage, dropout=m.dropout)


def load_parent(start_from: str | None) -> LoadedModel | None:
    if start_from is None:
        return None
    return load_checkpoint(None if start_from == "bundled" else start_from)


def card_and_net(conf: TrainConfig, classes: list[str], log: Log = print) -> tuple[ModelCard, PamNet | None, str | None]:
    """The new model's card and, when fine-tuning, a network holding the parent's weights.

    A parent fixes the window, spectrogram and architecture; a config that sets them to
    other values than the defaults and the parent's is refused. The head keeps the parent's
    rows for the classes both share; new classes start from a fresh row.
    """
    m = conf.model
    parent = load_parent(m.start_from)
    if parent is None:
        card = ModelCard(name=m.name, classes=list(classes), window_s=m.window_s, spectrogram=_spectrogram(m.spectrogram),
                         arch=_architecture(m))
        return card, None, None
    pc = parent.card
    default = ModelSection()
    clashes = []
    for key, mine, theirs, std in (
        ("model.window_s", m.window_s, pc.window_s, default.window_s),
        ("model.width", m.width, pc.arch.width, default.width),
        ("model.stages", m.stages, pc.arch.stages, default.stages),
        ("model.blocks_per_stage", m.blocks_per_stage, pc.arch.blocks_per_stage, default.blocks_per_stage),
        ("model.spectrogram", _spectrogram(m.spectrogram), pc.spectrogram, _spectrogram(default.spectrogram)),
    ):
        if mine != theirs and mine != std:
            clashes.append(f"{key} is {mine} but the parent model {pc.name} ({parent.model_id}) has {theirs}")
    if clashes:
        raise ConfigError("\n".join(clashes + ["leave these keys unset when fine-tuning (model.start_from)"]))
    arch = replace(pc.arch, dropout=m.dropout)
    card = ModelCard(name=m.name, classes=list(classes), window_s=pc.window_s, spectrogram=pc.spectrogram, arch=arch,
                     parent_id=parent.model_id)
    net = card.build()
    state = parent.net.state_dict()
    mine_state = net.state_dict()
    for k, v in state.items():
        if not k.startswith("head."):
            mine_state[k] = v.clone()
    shared = [c for c in classes if c in pc.classes]
    for c in shared:
        mine_state["head.weight"][classes.index(c)] = state["head.weight"][pc.classes.index(c)]
        mine_state["head.bias"][classes.index(c)] = state["head.bias"][pc.classes.index(c)]
    net.load_state_dict(mine_state)
    log(f"fine-tuning {pc.name} ({parent.model_id}): {len(shared)} of {len(classes)} classes kept from it")
    return card, net, parent.model_id


def fit_config(conf: TrainConfig, progress: bool = True) -> FitConfig:
    t, a = conf.train, conf.augment
    return FitConfig(
        epochs=t.epochs, batch_size=t.batch_size, repeats=t.repeats, lr=t.lr, weight_decay=t.weight_decay,
        schedule=t.schedule, warmup=t.warmup, patience=t.patience, min_epochs=t.min_epochs, keep=t.keep,
        overlay_p=a.overlay.p, snr_db=tuple(a.overlay.snr_db), gain_db=tuple(a.gain_db), mix_p=a.mix.p,
        shift_s=a.shift_s, spec_time_masks=a.specaugment.time_masks, spec_time_width=a.specaugment.time_width,
        spec_freq_masks=a.specaugment.freq_masks, spec_freq_width=a.specaugment.freq_width, balanced=t.balanced,
        ema_decay=t.ema_decay, hop_s=t.hop_s, seed=t.seed, device=t.device, progress=progress,
    )


# ---------------------------------------------------------------- stages

def prepare_data(conf: TrainConfig, run_dir: str | os.PathLike, log: Log = print) -> dict:
    """Read every labelled source, split (or read the split back), write config, split and data files."""
    run_dir = Path(run_dir)
    save_config(conf, run_dir)
    clips = load_sources(conf.data, conf.model.window_s)
    classes = list(conf.data.classes) if conf.data.classes else classes_of(clips)
    if not classes:
        raise RunError("the labelled data names no class: every clip is a negative")
    unknown = sorted({c for clip in clips for c in clip.labels} - set(classes))
    split_path = run_dir / "split.csv"
    if split_path.is_file():
        old, splits = read_split(run_dir)
        if sorted(map(clip_key, old)) != sorted(map(clip_key, clips)):
            raise RunError(f"{split_path}: the labelled data changed since this run was split; "
                           "start over with --fresh (or use another run folder)")
        clips = old
        log(f"split read back from {split_path}")
    else:
        s = conf.split
        splits = assign_splits(clips, s.val_fraction, s.test_fraction, s.seed, s.by, s.stratify_site, s.test_sites)
        write_split(clips, splits, split_path)
    backgrounds = background_files(conf.data.backgrounds)
    info = {
        "classes": classes,
        "clips": len(clips),
        "per_split": {name: splits.count(name) for name in SPLITS},
        "counts": counts(clips, splits),
        "ignored_classes": unknown,
        "backgrounds": [str(p) for p in backgrounds],
        "data_fingerprint": data_fingerprint(clips, splits, backgrounds),
    }
    (run_dir / "data.json").write_text(json.dumps(info, indent=1))
    if unknown:
        log(f"labels not among data.classes are ignored: {unknown}")
    absent = [c for c in classes if not any(c in clip.labels for clip in clips)]
    if absent:
        log(f"warning: no clip is labelled {absent}; the model cannot learn these classes")
    if info["per_split"]["train"] < 2:
        raise RunError(f"only {info['per_split']['train']} training clip(s) after the split")
    log(f"{len(clips)} clips, classes {classes}: {info['per_split']}; data fingerprint {info['data_fingerprint']}")
    return {"run_dir": str(run_dir), **{k: info[k] for k in ("classes", "clips", "per_split", "data_fingerprint")}}


def _data_info(run_dir: Path) -> dict:
    return json.loads((run_dir / "data.json").read_text())


def _subsets(run_dir: Path, classes: list[str], sample_rate: int,
             which: tuple[str, ...] = SPLITS) -> dict[str, ClipSet]:
    clips, splits = read_split(run_dir)
    out = {}
    for name in which:
        idx = [i for i, s in enumerate(splits) if s == name]
        out[name] = load_clip_set([clips[i] for i in idx], classes, sample_rate)
    return out


def read_backgrounds(paths: list[str], sample_rate: int, max_s: float) -> list[np.ndarray]:
    """Background recordings at the model's rate, at most ``max_s`` seconds in all."""
    import soundfile as sf

    out, total = [], 0.0
    for p in map(Path, paths):
        if total >= max_s:
            break
        info = sf.info(str(p))
        length = min(info.frames / info.samplerate, max_s - total)
        out.append(load_audio(LabelledClip(p, 0.0, length, (), None, p.name), sample_rate))
        total += length
    return out


def train_model(run_dir: str | os.PathLike, progress: bool = True, log: Log = print,
                on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train (or resume) on the run's training split; early stopping and history on validation."""
    run_dir = Path(run_dir)
    conf = read_config(run_dir)
    info = _data_info(run_dir)
    if conf.train.threads:
        torch.set_num_threads(conf.train.threads)
    card, net, _parent = card_and_net(conf, info["classes"], log)
    sets = _subsets(run_dir, card.classes, card.sample_rate, ("train", "val"))
    train, val = sets["train"], sets["val"]
    backgrounds: list[np.ndarray] = []
    if conf.augment.overlay.p > 0:
        if conf.data.negatives_as_background:
            backgrounds.extend(train.negatives().waves)
        backgrounds.extend(read_backgrounds(info["backgrounds"], card.sample_rate, conf.data.max_background_s))
        if not backgrounds:
            raise RunError("augment.overlay.p > 0 but there is no background audio: set data.backgrounds or "
                           "keep data.negatives_as_background with negative clips in the training split")
    cfg = fit_config(conf, progress)
    t0 = time.perf_counter()
    result = fit(card, train, val if len(val) else None, backgrounds=backgrounds, config=cfg, net=net,
                 state_dir=run_dir / "checkpoints", on_epoch=on_epoch)
    seconds = time.perf_counter() - t0
    history = result.history
    history.to_parquet(run_dir / "history.parquet", index=False)
    plot_learning_curve(history, run_dir / "learning_curve.png", result.best_epoch,
                        title=f"{card.name}: kept epoch {result.best_epoch} of {len(history)}")
    clips, splits = read_split(run_dir)
    card.training = {
        "config": conf.plain(), "data": info, "data_fingerprint": info["data_fingerprint"],
        CLIPS_KEY: clip_record(clips, splits),
        "fit": cfg.to_dict() | {"progress": None}, "best_epoch": result.best_epoch, "epochs_run": len(history),
        "stopped_early": result.stopped_early, "history": history.round(5).to_dict(orient="list"),
        "backgrounds_s": round(sum(len(b) for b in backgrounds) / card.sample_rate, 1),
        "pam_version": __version__, "torch_version": str(torch.__version__), "python": platform.python_version(),
    }
    save_checkpoint(run_dir / "checkpoints" / "trained.pt", result.net, card)
    if result.resumed_from:
        log(f"resumed after epoch {result.resumed_from}")
    log(f"trained: kept epoch {result.best_epoch} of {len(history)} (validation loss {result.best_val_loss:.4f}), "
        f"{seconds:.0f} s")
    return {"run_dir": str(run_dir), "best_epoch": result.best_epoch, "epochs_run": len(history),
            "stopped_early": result.stopped_early, "best_val_loss": _finite(result.best_val_loss),
            "val_ap": _finite(_at_epoch(history, result.best_epoch, "val_ap")),
            "resumed_from": result.resumed_from, "seconds": round(seconds, 1)}


def _finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _at_epoch(history: pd.DataFrame, epoch: int, col: str) -> float:
    row = history[history["epoch"] == epoch]
    return float(row[col].iloc[0]) if len(row) else math.nan


def _trained(run_dir: Path, device: str = "auto") -> LoadedModel:
    path = run_dir / "checkpoints" / "trained.pt"
    if not path.is_file():
        raise RunError(f"{run_dir}: no trained model (run train_model first)")
    return load_checkpoint(path, device=resolve_device(device))


def calibrate_model(run_dir: str | os.PathLike, log: Log = print) -> dict:
    """Per-class thresholds on the validation split (target precision or best F1)."""
    run_dir = Path(run_dir)
    conf = read_config(run_dir)
    model = _trained(run_dir, conf.train.device)
    val = _subsets(run_dir, model.card.classes, model.card.sample_rate, ("val",))["val"]
    c = conf.calibrate
    target = c.target_precision if c.method == "precision" else None
    if len(val):
        _, scores = evaluate_clip_set(model, val, conf.train.hop_s, {}, c.target_precision)
        chosen = calibrate(val.targets, scores, model.card.classes, target, c.placement)
        result = {k: v.to_dict() for k, v in chosen.items()}
    else:
        result = {k: {"threshold": 0.5, "method": "default", "target_precision": None} for k in model.card.classes}
        log("no validation clips: thresholds stay at 0.5")
    (run_dir / "calibration.json").write_text(json.dumps(result, indent=1))
    for k, v in result.items():
        log(f"threshold {k}: {v['threshold']:.3f} ({v['method']}"
            + (f"; validation precision {v['precision']:.3f} recall {v['recall']:.3f})" if "precision" in v else ")"))
    return {"run_dir": str(run_dir), "thresholds": {k: v["threshold"] for k, v in result.items()}}


def thresholds_of(run_dir: Path) -> dict[str, float]:
    path = run_dir / "calibration.json"
    if not path.is_file():
        raise RunError(f"{run_dir}: no calibration.json (run calibrate_model first)")
    return {k: float(v["threshold"]) for k, v in json.loads(path.read_text()).items()}


def evaluate_model(run_dir: str | os.PathLike, log: Log = print) -> dict:
    """Reports on the validation and test splits at the calibrated thresholds."""
    run_dir = Path(run_dir)
    conf = read_config(run_dir)
    model = _trained(run_dir, conf.train.device)
    thresholds = thresholds_of(run_dir)
    sets = _subsets(run_dir, model.card.classes, model.card.sample_rate, ("val", "test"))
    clips, splits = read_split(run_dir)
    out: dict = {"run_dir": str(run_dir)}
    parts = []
    for name, data in sets.items():
        if not len(data):
            continue
        report, scores = evaluate_clip_set(model, data, conf.train.hop_s, thresholds, conf.calibrate.target_precision)
        members = [c for c, s in zip(clips, splits) if s == name]
        items = pd.DataFrame({"path": [str(c.path) for c in members], "start_s": [c.start_s for c in members],
                              "end_s": [c.end_s for c in members], "labels": [";".join(c.labels) for c in members],
                              "site": [c.site for c in members]})
        for k, cls in enumerate(model.card.classes):
            items[f"score_{cls}"] = scores[:, k]
        write_report(report, run_dir / "evaluation", name, f"{name} split", items)
        parts.append(to_markdown(report, f"{name} split ({len(data)} clips)"))
        out[name] = {r["class"]: {k: _finite(r[k]) if isinstance(r[k], float) else r[k] for k in
                                  ("ap", "roc_auc", "recall_at_target", "precision", "recall", "f1", "positives",
                                   "negatives")} for r in report.to_dict("records")}
        log(f"{name}: macro AP {macro_ap(report):.3f} on {len(data)} clips")
    (run_dir / "evaluation").mkdir(exist_ok=True)
    (run_dir / "evaluation" / "report.md").write_text(
        f"# Evaluation of run {run_dir.name}\n\nThresholds: {json.dumps(thresholds)}\n\n" + "\n".join(parts))
    (run_dir / "evaluation" / "summary.json").write_text(json.dumps(out, indent=1))
    return out


def export_model(run_dir: str | os.PathLike, log: Log = print) -> dict:
    """Write ``model.pt`` (calibrated, with metrics and provenance), register it, copy it to ``output.export``."""
    from pam.detect.registry import register

    run_dir = Path(run_dir)
    conf = read_config(run_dir)
    trained = _trained(run_dir)
    card = trained.card
    card.thresholds = thresholds_of(run_dir)
    summary_path = run_dir / "evaluation" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    card.metrics = {
        "val": summary.get("val", {}), "test": summary.get("test", {}),
        "calibration": json.loads((run_dir / "calibration.json").read_text()),
        "note": (f"clip-level scores (max over {card.window_s:g}-s windows every {conf.train.hop_s:g} s); "
                 f"recall_at_target at precision {conf.calibrate.target_precision:g}; precision/recall/F1 at the "
                 "calibrated thresholds"),
    }
    card.training = {**card.training, "run_dir": str(run_dir)}
    path = run_dir / "model.pt"
    model_id = _same_model(path, trained.net, card) or save_checkpoint(path, trained.net, card)
    out = {"run_dir": str(run_dir), "model_id": model_id, "path": str(path), "registered": None, "exported": None}
    if conf.output.store:
        register(conf.output.store, path, config=conf.plain(), data_fingerprint=card.training.get("data_fingerprint"))
        out["registered"] = conf.output.store
        log(f"registered {model_id} in {conf.output.store}")
    if conf.output.export:
        dest = Path(conf.output.export)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
        out["exported"] = str(dest)
        log(f"copied to {dest}")
    log(f"model {model_id}: {path}")
    return out


def _same_model(path: Path, net: PamNet, card: ModelCard) -> str | None:
    """The id of ``path`` when it already holds exactly this model (a rerun keeps its id)."""
    if not path.is_file():
        return None
    try:
        old = load_checkpoint(path)
    except ModelError:
        return None
    state = net.state_dict()
    same = (old.card.thresholds == card.thresholds and old.card.classes == card.classes
            and json.dumps(old.card.metrics, sort_keys=True, default=str) == json.dumps(card.metrics, sort_keys=True, default=str)
            and old.card.parent_id == card.parent_id
            and all(torch.equal(v.cpu(), state[k].cpu()) for k, v in old.net.state_dict().items()))
    return old.model_id if same else None


def run_training(conf: TrainConfig, run_dir: str | os.PathLike | None = None, *, fresh: bool = False,
                 progress: bool = True, log: Log = print) -> dict:
    """All stages in this process (``pam train --no-prefect``); the flow runs the same calls."""
    run_dir = Path(run_dir) if run_dir is not None else conf.run_dir()
    if fresh:
        clear_run(run_dir)
    t0 = time.perf_counter()
    prepared = prepare_data(conf, run_dir, log)
    trained = train_model(run_dir, progress, log)
    calibrated = calibrate_model(run_dir, log)
    evaluated = evaluate_model(run_dir, log)
    exported = export_model(run_dir, log)
    return {"run_dir": str(run_dir), "prepare": prepared, "train": trained, "calibrate": calibrated,
            "evaluate": evaluated, "export": exported, "wall_s": round(time.perf_counter() - t0, 1)}


__all__ = ["prepare_data", "train_model", "calibrate_model", "evaluate_model", "export_model", "run_training",
           "read_config", "read_split", "RunError", "ModelError"]


def recalibrate(model_path: str | os.PathLike, clips: list[LabelledClip], out: str | os.PathLike,
                target_precision: float | None = 0.9, placement: str = "midpoint", hop_s: float = 0.5,
                log: Log = print) -> dict:
    """New thresholds for an existing model from labelled clips of the site where it will run.

    Scores shift between sites, so a threshold chosen on the training sites need not keep
    its precision elsewhere; a few dozen reviewed clips of the new site are enough to move
    it. Weights are unchanged; the new checkpoint names the old one as its parent.
    """
    model = load_checkpoint(model_path)
    card = model.card
    require_known_labels(clips, card.classes)
    data = load_clip_set(clips, card.classes, card.sample_rate)
    _, scores = evaluate_clip_set(model, data, hop_s, {}, target_precision or 0.9)
    chosen = calibrate(data.targets, scores, card.classes, target_precision, placement)
    old = dict(card.thresholds)
    # a class without positives among these clips keeps the threshold it had
    card.thresholds = {c: (v.threshold if v.positives else old.get(c, v.threshold)) for c, v in chosen.items()}
    card.metrics = {**card.metrics, "recalibration": {
        "clips": len(clips), "previous_thresholds": old, "chosen": {c: v.to_dict() for c, v in chosen.items()},
        "sites": sorted({c.site for c in clips if c.site})}}
    card.parent_id = model.model_id
    try:  # same weights, same training clips: the new card lists them even when the parent's sidecar did
        listed = listed_clips(model)
    except ModelError as exc:
        listed = None
        log(f"note: the new card does not list the training clips: {exc}")
    if listed:
        card.training = {**card.training, CLIPS_KEY: listed}
    model_id = save_checkpoint(out, model.net, card)
    for c, v in chosen.items():
        if not v.positives:
            log(f"{c}: threshold {old.get(c, 0.5):.3f} kept (no clip of this class among these {len(clips)})")
            continue
        log(f"{c}: threshold {old.get(c, 0.5):.3f} -> {v.threshold:.3f} ({v.method}; on these clips precision "
            f"{v.precision:.3f} recall {v.recall:.3f}, {v.positives} positives, {v.negatives} negatives)")
        if v.positives < 10 or v.negatives < 10:
            log(f"{c}: only {v.positives} positive and {v.negatives} negative clips; a threshold from so few is "
                "rough (review a few dozen of each if you can)")
    return {"model_id": model_id, "path": str(out), "thresholds": card.thresholds, "parent_id": model.model_id}
