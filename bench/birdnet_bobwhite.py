"""A catalog model's class on labelled clips, per site group: BirdNET's Northern Bobwhite on
the bobwhite clips (docs/model.md, "BirdNET on the same clips").

    python bench/birdnet_bobwhite.py ../shared/data/bobwhite/labels.csv \
        --model birdnet-v2.4 --class "Colinus virginianus_Northern Bobwhite" --label bobwhite_covey

The clips are read and resampled as pam's evaluation reads them (pam.train.clips), each
clip's score is the maximum over the model's windows every --hop seconds covering it, as
``pam evaluate`` scores clips, and the metrics are pam.train.evaluate's: AP, ROC-AUC, recall
at precision 0.9 and precision / recall at the model's own threshold for the class.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pam.detect.catalog import load_model
from pam.train.clips import load_clip_set, load_clip_table
from pam.train.evaluate import report_frame
from pam.train.fit import clip_windows


def clip_scores(model, waves: list[np.ndarray], column: int, hop_s: float, batch: int = 32) -> np.ndarray:
    """Each clip's maximum score of class ``column`` over its windows."""
    windows = [clip_windows(w, model.sample_rate, model.window_s, hop_s) for w in waves]
    owner = np.concatenate([np.full(len(w), i) for i, w in enumerate(windows)])
    stacked = torch.cat(windows)
    with torch.inference_mode():
        per_window = torch.cat([model.forward(stacked[i:i + batch]).scores[:, column]
                                for i in range(0, len(stacked), batch)]).numpy()
    best = np.full(len(waves), -np.inf)
    np.maximum.at(best, owner, per_window)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("labels", help="clip table (path,label,site)")
    ap.add_argument("--model", default="birdnet-v2.4")
    ap.add_argument("--class", dest="cls", default="Colinus virginianus_Northern Bobwhite", help="the model's class (label) to score")
    ap.add_argument("--label", default="bobwhite_covey", help="the clip table's label that class stands for")
    ap.add_argument("--hop", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    column = model.classes.index(args.cls)
    threshold = float(model.threshold_vector()[column])
    clips = load_clip_table(args.labels)
    data = load_clip_set(clips, [args.label], model.sample_rate)
    t0 = time.perf_counter()
    scores = clip_scores(model, data.waves, column, args.hop)
    print(f"{model.describe()} class {args.cls!r} as {args.label!r}: {len(clips)} clips scored in "
          f"{time.perf_counter() - t0:.1f} s; threshold {threshold}")
    sites = np.array([c.site for c in clips])
    print("| site group | clips | positives | AP | ROC-AUC | recall at precision 0.9 | "
          f"precision at {threshold} | recall at {threshold} |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for site in [*sorted(set(sites)), "all"]:
        sel = np.ones(len(sites), bool) if site == "all" else sites == site
        row = report_frame(data.targets[sel], scores[sel, None], [args.label], {args.label: threshold}).iloc[0]
        print(f"| {site} | {int(sel.sum())} | {row['positives']} | {row['ap']:.3f} | {row['roc_auc']:.3f} | "
              f"{row['recall_at_target']:.3f} | {row['precision']:.3f} | {row['recall']:.3f} |")


if __name__ == "__main__":
    main()
