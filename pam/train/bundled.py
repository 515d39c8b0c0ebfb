"""Build pam's bundled Northern Bobwhite covey-call model and measure it across sites.

    python -m pam.train.bundled --data ../shared/data/bobwhite --out pam/models/bobwhite-v1.pt

1. Cross-site evaluation, both ways (train on WLFW_AL, test on WLFW_GA, and the reverse),
   with and without background overlay, over several seeds. A validation split carved
   from the training site (stratified, by recording) drives early stopping and threshold
   calibration; the test site is only ever scored, never used to choose anything.
2. The final model is trained on both sites (validation split from both), its threshold
   calibrated for precision 0.9 on that split, and saved with the cross-site numbers in
   its card.

Data: GAMELab-UGA/NorthernBobwhiteCNN (MIT licence), doi:10.1002/rse2.294.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pam import __version__
from pam.checkpoint import save_checkpoint
from pam.model import Architecture, ModelCard, SpectrogramSettings
from pam.train.calibrate import calibrate
from pam.train.clips import ClipSet, LabelledClip, load_clip_set, load_clip_table
from pam.train.fit import FitConfig, fit, score_clips
from pam.train.metrics import class_report
from pam.train.split import split_by_recording

CLASSES = ["bobwhite_covey"]
WINDOW_S = 3.0
SITES = ("WLFW_AL", "WLFW_GA")
TARGET_PRECISION = 0.9
VAL_FRACTION = 0.2
EVAL_SEEDS = 3
ARCH = Architecture(width=16, stages=3, blocks_per_stage=1, dropout=0.2)
SPECTROGRAM = SpectrogramSettings()  # the model's defaults: 16 kHz, 64 mels, 50-8000 Hz, band_mean
CONFIG = FitConfig(
    epochs=30, batch_size=32, repeats=4, lr=3e-3, weight_decay=1e-2, schedule="onecycle",
    patience=8, overlay_p=0.8, snr_db=(0.0, 20.0), gain_db=(-12.0, 12.0), mix_p=0.0,
    ema_decay=0.9, hop_s=0.5,
)
SOURCE = {
    "name": "Northern Bobwhite covey-call clips (WLFW_AL, WLFW_GA)",
    "repository": "GAMELab-UGA/NorthernBobwhiteCNN",
    "licence": "MIT (Copyright (c) 2018 CS230 Teaching team; Copyright (c) 2022 GAMELab-UGA)",
    "paper": "The development of a convolutional neural network for the automatic detection of "
             "Northern Bobwhite Colinus virginianus covey calls. Remote Sensing in Ecology and "
             "Conservation (2022). doi:10.1002/rse2.294",
}
METRIC_KEYS = ("ap", "roc_auc", f"recall_at_p{TARGET_PRECISION:g}", "threshold", "precision", "recall", "f1")


def card_for(name: str = "bobwhite-v1") -> ModelCard:
    return ModelCard(name=name, classes=list(CLASSES), window_s=WINDOW_S, spectrogram=SPECTROGRAM, arch=ARCH)


def _split(clips: list[LabelledClip], data: ClipSet, seed: int) -> tuple[ClipSet, ClipSet, list[int], list[int]]:
    train_idx, val_idx = split_by_recording(clips, VAL_FRACTION, seed=seed, stratify_site=True)
    return data.subset(train_idx), data.subset(val_idx), train_idx, val_idx


def train_and_calibrate(clips: list[LabelledClip], data: ClipSet, config: FitConfig, seed: int):
    """Fit on a seeded split of ``clips`` and calibrate the threshold on its validation part."""
    card = card_for()
    train, val, train_idx, val_idx = _split(clips, data, seed)
    result = fit(card, train, val, backgrounds=train.negatives(), config=replace(config, seed=seed))
    val_scores = score_clips(result.net, val, WINDOW_S, hop_s=config.hop_s)
    chosen = calibrate(val.targets, val_scores, CLASSES, TARGET_PRECISION)
    return result, chosen, (train_idx, val_idx)


def cross_site(clips: list[LabelledClip], data: ClipSet, train_site: str, test_site: str,
               config: FitConfig, seeds: list[int], log=print) -> dict:
    """Train on one site group, test on the other; per-seed reports and their mean and sd."""
    tr = [i for i, c in enumerate(clips) if c.site == train_site]
    te = [i for i, c in enumerate(clips) if c.site == test_site]
    train_clips, train_data, test = [clips[i] for i in tr], data.subset(tr), data.subset(te)
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        result, chosen, _ = train_and_calibrate(train_clips, train_data, config, seed)
        thresholds = {c: v.threshold for c, v in chosen.items()}
        scores = score_clips(result.net, test, WINDOW_S, hop_s=config.hop_s)
        report = class_report(test.targets, scores, CLASSES, thresholds, TARGET_PRECISION)
        report = {c: {**r, "best_epoch": result.best_epoch, "epochs_run": len(result.history)} for c, r in report.items()}
        runs.append(report)
        r = report[CLASSES[0]]
        log(f"  {train_site}->{test_site} overlay={config.overlay_p > 0} seed {seed}: AP {r['ap']:.3f} "
            f"ROC-AUC {r['roc_auc']:.3f} R@P{TARGET_PRECISION:g} {r[METRIC_KEYS[2]]:.3f} | thr {r['threshold']:.3f} "
            f"P {r['precision']:.3f} R {r['recall']:.3f} F1 {r['f1']:.3f} | best epoch {result.best_epoch}"
            f"/{len(result.history)} ({time.perf_counter() - t0:.0f} s)")
    summary = {}
    for c in CLASSES:
        summary[c] = {}
        for k in METRIC_KEYS:
            values = np.array([run[c][k] for run in runs], dtype=float)
            summary[c][k] = float(np.nanmean(values))
            summary[c][f"{k}_sd"] = float(np.nanstd(values))
    return {"train_site": train_site, "test_site": test_site, "seeds": list(seeds),
            "test_clips": len(te), "mean": summary, "runs": runs}


def _fmt(entry: dict) -> str:
    m = entry["mean"][CLASSES[0]]
    cell = lambda k: f"{m[k]:.3f} ± {m[k + '_sd']:.3f}"  # noqa: E731
    return (f"AP {cell('ap')} | ROC-AUC {cell('roc_auc')} | R@P{TARGET_PRECISION:g} {cell(METRIC_KEYS[2])} | "
            f"at calibrated thr {m['threshold']:.3f}: P {cell('precision')} R {cell('recall')} F1 {cell('f1')}")


def counts(clips: list[LabelledClip]) -> dict:
    out: dict = {}
    for c in clips:
        key = f"{c.site}/{'+'.join(c.labels) or 'none'}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pam.train.bundled", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with labels.csv (the bobwhite data)")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    ap.add_argument("--seed", type=int, default=0, help="base seed: evaluation uses seed..seed+N-1, the final model seed")
    ap.add_argument("--eval-seeds", type=int, default=EVAL_SEEDS, help="seeds per cross-site setting")
    ap.add_argument("--skip-eval", action="store_true", help="train the final model only (no cross-site numbers)")
    ap.add_argument("--min-epochs", type=int, default=CONFIG.min_epochs,
                    help="epochs before which early stopping keeps no state (a sensitivity experiment, see docs/model.md)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    config = replace(CONFIG, device=args.device, progress=not args.no_progress, min_epochs=args.min_epochs)

    clips = load_clip_table(args.data / "labels.csv")
    missing = set(SITES) - {c.site for c in clips}
    if missing:
        print(f"error: {args.data / 'labels.csv'} has no clips of site(s) {sorted(missing)}", file=sys.stderr)
        return 2
    data = load_clip_set(clips, CLASSES, SPECTROGRAM.sample_rate)
    print(f"{len(clips)} clips from {args.data}: {counts(clips)}")
    print("Data: GAMELab-UGA/NorthernBobwhiteCNN (MIT licence), doi:10.1002/rse2.294")

    seeds = list(range(args.seed, args.seed + args.eval_seeds))
    evaluation: dict = {}
    if not args.skip_eval:
        for train_site, test_site in (SITES, SITES[::-1]):
            for overlay in (False, True):
                cfg = replace(config, overlay_p=config.overlay_p if overlay else 0.0)
                key = f"{train_site}->{test_site}"
                print(f"cross-site {key}, background overlay {'on' if overlay else 'off'}, seeds {seeds}")
                entry = cross_site(clips, data, train_site, test_site, cfg, seeds)
                evaluation.setdefault(key, {})["overlay" if overlay else "no_overlay"] = entry
                print(f"  => {_fmt(entry)}")

    print(f"final model: both sites, seed {args.seed}")
    t0 = time.perf_counter()
    result, chosen, (train_idx, val_idx) = train_and_calibrate(clips, data, config, args.seed)
    thresholds = {c: v.threshold for c, v in chosen.items()}
    print(f"  best epoch {result.best_epoch}/{len(result.history)} ({time.perf_counter() - t0:.0f} s); "
          f"threshold {thresholds} ({chosen[CLASSES[0]].method}: validation P {chosen[CLASSES[0]].precision:.3f} "
          f"R {chosen[CLASSES[0]].recall:.3f} on {len(val_idx)} clips)")

    card = card_for()
    card.thresholds = thresholds
    summary = {
        key: {aug: {k: v for k, v in entry["mean"][CLASSES[0]].items()} for aug, entry in per.items()}
        for key, per in evaluation.items()
    }
    card.metrics = {
        "cross_site": summary,
        "cross_site_runs": {key: {aug: entry["runs"] for aug, entry in per.items()} for key, per in evaluation.items()},
        "cross_site_note": (f"mean (and _sd) over seeds {seeds}; each run trained on one site group with "
                            f"early stopping and threshold calibration on a {VAL_FRACTION:.0%} validation split "
                            "of that site, scored on all clips of the other site as the max over 3-s windows "
                            f"every {config.hop_s} s; threshold = calibrated for precision {TARGET_PRECISION} "
                            "on the validation split"),
        "validation": {c: v.to_dict() for c, v in chosen.items()},
    }
    card.training = {
        "data": {**SOURCE, "clips": counts(clips), "train_clips": counts([clips[i] for i in train_idx]),
                 "val_clips": counts([clips[i] for i in val_idx])},
        "seed": args.seed,
        "eval_seeds": seeds,
        "config": config.to_dict() | {"device": str(args.device), "progress": None},
        "val_fraction": VAL_FRACTION,
        "target_precision": TARGET_PRECISION,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "history": result.history.round(5).to_dict(orient="list"),
        "command": "python -m pam.train.bundled " + " ".join(sys.argv[1:] if argv is None else argv),
        "pam_version": __version__,
        "torch_version": str(torch.__version__),
        "python": platform.python_version(),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    model_id = save_checkpoint(args.out, result.net, card)
    size = args.out.stat().st_size
    print(f"saved {args.out} ({size / 1e6:.2f} MB), model id {model_id}")
    if evaluation:
        print("\ncross-site summary (mean ± sd over seeds):")
        for key, per in evaluation.items():
            for aug in ("no_overlay", "overlay"):
                print(f"  {key:18s} {aug:10s} {_fmt(per[aug])}")
    print(f"wall time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
