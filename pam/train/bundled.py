"""Build pam's bundled Northern Bobwhite covey-call model with the training flow, and measure it across sites.

    python -m pam.train.bundled --config configs/train.yaml --out pam/models/bobwhite-v2.pt

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
import pandas as pd
import torch

from pam.detect.checkpoint import load_checkpoint, save_checkpoint
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


def site_adapted(evaluation: dict, fraction: float = 0.2, draws: int = 10, target: float = 0.9) -> dict:
    """Thresholds from a few labelled clips of the new site, judged on the rest of it.

    For every cross-site run, the test site's clip scores (``evaluation/test-items.parquet``)
    are split ``draws`` times at random, stratified: ``fraction`` of the calls and of the
    absences calibrate the threshold (precision ``target``), the rest measure it. This is
    what ``pam calibrate`` does with reviewed clips of a deployment site; the weights stay.
    """
    from pam.train.calibrate import calibrate
    from pam.train.metrics import precision_recall_f1

    out: dict = {}
    for key, per in evaluation.items():
        for aug, entry in per.items():
            rows = []
            for run in entry["runs"]:
                items = pd.read_parquet(Path(run["run_dir"]) / "evaluation" / "test-items.parquet")
                y = items["labels"].str.split(";").apply(lambda ls: CLASS in ls).to_numpy()
                s = items[f"score_{CLASS}"].to_numpy()
                for d in range(draws):
                    rng = np.random.default_rng(1000 * run["seed"] + d)
                    pick = np.zeros(len(y), dtype=bool)
                    for group in (np.flatnonzero(y), np.flatnonzero(~y)):
                        pick[rng.choice(group, max(1, round(fraction * len(group))), replace=False)] = True
                    t = calibrate(y[pick, None].astype(float), s[pick, None], [CLASS], target)[CLASS].threshold
                    at = precision_recall_f1(y[~pick], s[~pick], t)
                    rows.append({"threshold": t, "precision": at.precision, "recall": at.recall, "f1": at.f1,
                                 "calibration_clips": int(pick.sum()), "test_clips": int((~pick).sum())})
            frame = pd.DataFrame(rows)
            out.setdefault(key, {})[aug] = {
                **{f"{k}": float(frame[k].mean()) for k in ("threshold", "precision", "recall", "f1")},
                **{f"{k}_sd": float(frame[k].std(ddof=0)) for k in ("precision", "recall", "f1")},
                "share_meeting_target": float(((frame["precision"] >= target) & (frame["recall"] >= 0.8)).mean()),
                "calibration_clips": int(frame["calibration_clips"].iloc[0]), "test_clips": int(frame["test_clips"].iloc[0]),
                "splits": len(frame)}
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


def adapted_markdown(adapted: dict) -> str:
    lines = ["| train -> test | overlay | threshold | precision | recall | F1 | splits meeting P >= 0.9 and R >= 0.8 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, per in adapted.items():
        for aug in ("no_overlay", "overlay"):
            m = per[aug]
            lines.append(f"| {key} | {'on' if aug == 'overlay' else 'off'} | {m['threshold']:.3f} | "
                         f"{m['precision']:.3f} ± {m['precision_sd']:.3f} | {m['recall']:.3f} ± {m['recall_sd']:.3f} | "
                         f"{m['f1']:.3f} ± {m['f1_sd']:.3f} | {m['share_meeting_target']:.0%} of {m['splits']} |")
    return "\n".join(lines) + "\n"


def evaluate_cross_site(config: Path, overrides: list[str], site_overrides: list[list[str]], seeds: list[int],
                        progress: bool) -> dict:
    """Every direction x overlay off/on x seed; ``site_overrides`` ([SITE, KEY=VALUE]) apply when training on SITE."""
    evaluation: dict = {}
    for train_site, test_site in (SITES, SITES[::-1]):
        key = f"{train_site}->{test_site}"
        for overlay in (False, True):
            runs = []
            for seed in seeds:
                t0 = time.perf_counter()
                sets = overrides + [kv for site, kv in site_overrides if site == train_site]
                r = cross_site_run(config, sets, train_site, test_site, overlay, seed, progress)
                runs.append(r)
                print(f"{key} overlay={'on' if overlay else 'off'} seed {seed}: AP {f3(r['ap'])} ROC-AUC "
                      f"{f3(r['roc_auc'])} R@P0.9 {f3(r['recall_at_target'])} | thr {f3(r['threshold'])} "
                      f"P {f3(r['precision'])} R {f3(r['recall'])} F1 {f3(r['f1'])} | kept epoch {r['best_epoch']} "
                      f"of {r['epochs_run']} ({time.perf_counter() - t0:.0f} s)", flush=True)
            evaluation.setdefault(key, {})["overlay" if overlay else "no_overlay"] = {"runs": runs,
                                                                                     "mean": summarise(runs)}
    return evaluation


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pam.train.bundled", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=Path("configs/train.yaml"), help="training config")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint to write (e.g. pam/models/bobwhite-v2.pt)")
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
    shipped: dict = {}
    tables = []
    if not args.skip_eval:
        evaluation = evaluate_cross_site(args.config, args.overrides, args.site_overrides, args.seeds, progress)
        adapted = site_adapted(evaluation)
        tables.append("Cross-site, the protocol" + (" (recipes chosen per training site)" if args.site_overrides
                                                     else "") + ":\n\n" + markdown(evaluation)
                      + "\nThresholds from a few labelled clips of the test site:\n\n" + adapted_markdown(adapted))
        if args.site_overrides:  # the shipped recipe, in both directions too (shared runs are reused)
            shipped = evaluate_cross_site(args.config, args.overrides, [], args.seeds, progress)
            tables.append("Cross-site, the shipped recipe in both directions:\n\n" + markdown(shipped)
                          + "\nThresholds from a few labelled clips of the test site:\n\n"
                          + adapted_markdown(site_adapted(shipped)))
        print("\n".join(tables))
        if args.report:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(json.dumps({"protocol": evaluation, "site_adapted": adapted,
                                               "shipped_recipe": shipped,
                                               "shipped_recipe_site_adapted": site_adapted(shipped) if shipped else {}},
                                              indent=1))
            args.report.with_suffix(".md").write_text("\n".join(tables))

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
                        "site_adapted_threshold": adapted,
                        **({"cross_site_shipped_recipe": {k: {aug: e["mean"] for aug, e in per.items()}
                                                          for k, per in shipped.items()},
                            "cross_site_shipped_recipe_runs": {k: {aug: e["runs"] for aug, e in per.items()}
                                                               for k, per in shipped.items()}} if shipped else {}),
                        "cross_site_note": (f"mean (and _sd) over seeds {args.seeds}; each run is `pam train` of the "
                                            "same config with split.test_sites = the other site group: validation, "
                                            "early stopping, calibration and overlay material from the training "
                                            "site only; clip scores = max over 3-s windows every 0.5 s; "
                                            f"per-site recipe overrides: {args.site_overrides}")}
    card.training = {**card.training, "data_source": SOURCE,
                     "command": "python -m pam.train.bundled " + " ".join(sys.argv[1:] if argv is None else argv),
                     "final_run_s": round(final_s, 1), "wall_s": round(time.perf_counter() - t_start, 1)}
    model_id = save_checkpoint(args.out, model.net, card)
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB), model id {model_id}; "
          f"wall time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
