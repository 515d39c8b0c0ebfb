"""Build pam's bundled Northern Bobwhite covey-call model with the training flow, and measure it across sites.

    python -m pam.train.bundled --config configs/train.yaml --out pam/models/bobwhite-v1.pt

1. Cross-site evaluation, both ways (train on WLFW_AL, test on WLFW_GA, and the reverse),
   with and without background overlay, over several seeds. Every run is an ordinary
   ``pam train`` run of the same config with ``split.test_sites`` set to the other site
   group (``--set split.test_sites=[WLFW_GA] --set split.seed=S --set train.seed=S``, and
   ``--set augment.overlay.p=0`` without overlay), so it is measured exactly as the shipped
   model is trained: validation split, early stopping, calibration and overlay material
   come from the training site only; the test site is only ever scored.
2. The final model: the same config on both site groups (``pam train CONFIG``), its card
   completed with the cross-site numbers, written to ``--out``.

Data: GAMELab-UGA/NorthernBobwhiteCNN (MIT licence), doi:10.1002/rse2.294.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pam.checkpoint import load_checkpoint, save_checkpoint
from pam.train.config import load_train_config
from pam.train.run import run_training

SITES = ("WLFW_AL", "WLFW_GA")
CLASS = "bobwhite_covey"
METRICS = ("ap", "roc_auc", "recall_at_target", "threshold", "precision", "recall", "f1")
SOURCE = {
    "name": "Northern Bobwhite covey-call clips (WLFW_AL, WLFW_GA)",
    "repository": "GAMELab-UGA/NorthernBobwhiteCNN",
    "licence": "MIT (Copyright (c) 2018 CS230 Teaching team; Copyright (c) 2022 GAMELab-UGA)",
    "paper": "The development of a convolutional neural network for the automatic detection of "
             "Northern Bobwhite Colinus virginianus covey calls. Remote Sensing in Ecology and "
             "Conservation (2022). doi:10.1002/rse2.294",
}


def quiet(_message: str) -> None:
    pass


def f3(v: float | None) -> str:
    return "nan" if v is None or v != v else f"{v:.3f}"


def cross_site_run(config: Path, overrides: list[str], train_site: str, test_site: str, overlay: bool,
                   seed: int, progress: bool) -> dict:
    """One cross-site run through the training stages; its test-site scores."""
    sets = overrides + [f"split.test_sites=[{test_site}]", f"split.seed={seed}", f"train.seed={seed}"]
    if not overlay:
        sets.append("augment.overlay.p=0")
    conf = load_train_config(config, sets)
    result = run_training(conf, progress=progress, log=quiet)
    run = Path(result["run_dir"])
    test = json.loads((run / "evaluation" / "summary.json").read_text())["test"][CLASS]
    threshold = json.loads((run / "calibration.json").read_text())[CLASS]["threshold"]
    return {**{k: test[k] for k in METRICS if k in test}, "threshold": threshold, "seed": seed,
            "best_epoch": result["train"]["best_epoch"], "epochs_run": result["train"]["epochs_run"],
            "run_dir": str(run), "set": sets}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for k in METRICS:
        values = np.array([np.nan if r.get(k) is None else r[k] for r in runs], dtype=float)
        out[k] = float(np.nanmean(values))
        out[f"{k}_sd"] = float(np.nanstd(values))
    return out


def markdown(evaluation: dict) -> str:
    lines = ["| train -> test | overlay | AP | ROC-AUC | recall at precision 0.9 | calibrated threshold: precision "
             "| recall | F1 |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, per in evaluation.items():
        for aug in ("no_overlay", "overlay"):
            m = per[aug]["mean"]
            cell = lambda k: f"{m[k]:.3f} ± {m[k + '_sd']:.3f}"  # noqa: E731
            lines.append(f"| {key} | {'on' if aug == 'overlay' else 'off'} | {cell('ap')} | {cell('roc_auc')} | "
                         f"{cell('recall_at_target')} | {cell('precision')} | {cell('recall')} | {cell('f1')} |")
    lines += ["", "| train -> test | overlay | " + " | ".join(f"seed {r['seed']}" for r in
                                                            next(iter(evaluation.values()))["overlay"]["runs"]) + " |"]
    lines.append("| --- | --- |" + " --- |" * len(next(iter(evaluation.values()))["overlay"]["runs"]))
    for key, per in evaluation.items():
        for aug in ("no_overlay", "overlay"):
            cells = [f"{f3(r['ap'])} / {f3(r['recall_at_target'])} ({r['best_epoch']} of {r['epochs_run']})"
                     for r in per[aug]["runs"]]
            lines.append(f"| {key} | {'on' if aug == 'overlay' else 'off'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pam.train.bundled", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=Path("configs/train.yaml"), help="training config")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint to write (e.g. pam/models/bobwhite-v1.pt)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override KEY=VALUE")
    ap.add_argument("--set-when-training-on", dest="site_overrides", nargs=2, action="append", default=[],
                    metavar=("SITE", "KEY=VALUE"),
                    help="override applied only to cross-site runs that train on SITE (a recipe chosen per site)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the cross-site runs")
    ap.add_argument("--skip-eval", action="store_true", help="train the final model only (no cross-site runs)")
    ap.add_argument("--report", type=Path, default=None, help="write the cross-site results here (JSON + .md)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    progress = not args.no_progress
    evaluation: dict = {}
    if not args.skip_eval:
        for train_site, test_site in (SITES, SITES[::-1]):
            key = f"{train_site}->{test_site}"
            for overlay in (False, True):
                runs = []
                for seed in args.seeds:
                    t0 = time.perf_counter()
                    sets = args.overrides + [kv for site, kv in args.site_overrides if site == train_site]
                    r = cross_site_run(args.config, sets, train_site, test_site, overlay, seed, progress)
                    runs.append(r)
                    print(f"{key} overlay={'on' if overlay else 'off'} seed {seed}: AP {f3(r['ap'])} ROC-AUC "
                          f"{f3(r['roc_auc'])} R@P0.9 {f3(r['recall_at_target'])} | thr {f3(r['threshold'])} "
                          f"P {f3(r['precision'])} R {f3(r['recall'])} F1 {f3(r['f1'])} | kept epoch {r['best_epoch']} of {r['epochs_run']} ({time.perf_counter() - t0:.0f} s)",
                          flush=True)
                evaluation.setdefault(key, {})["overlay" if overlay else "no_overlay"] = {
                    "runs": runs, "mean": summarise(runs)}
        table = markdown(evaluation)
        print(table)
        if args.report:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(json.dumps(evaluation, indent=1))
            args.report.with_suffix(".md").write_text(table)

    conf = load_train_config(args.config, args.overrides)
    t0 = time.perf_counter()
    result = run_training(conf, progress=progress, log=print)
    final_s = time.perf_counter() - t0
    model = load_checkpoint(result["export"]["path"])
    card = model.card
    if evaluation:
        card.metrics = {**card.metrics,
                        "cross_site": {k: {aug: e["mean"] for aug, e in per.items()} for k, per in evaluation.items()},
                        "cross_site_runs": {k: {aug: e["runs"] for aug, e in per.items()} for k, per in evaluation.items()},
                        "cross_site_note": (f"mean (and _sd) over seeds {args.seeds}; each run is `pam train` of the "
                                            "same config with split.test_sites = the other site group: validation, "
                                            "early stopping, calibration and overlay material from the training "
                                            "site only; clip scores = max over 3-s windows every 0.5 s")}
    card.training = {**card.training, "data_source": SOURCE,
                     "command": "python -m pam.train.bundled " + " ".join(sys.argv[1:] if argv is None else argv),
                     "final_run_s": round(final_s, 1), "wall_s": round(time.perf_counter() - t_start, 1)}
    model_id = save_checkpoint(args.out, model.net, card)
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB), model id {model_id}; "
          f"wall time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
