"""A bobwhite head on BirdNET embeddings across site groups, and how many clips of the new site
it needs (docs/model.md, "A head on BirdNET embeddings").

    python bench/bobwhite_heads.py ../shared/data/bobwhite/labels.csv --label bobwhite_covey --threads 1

Every clip is read at 48 kHz as pam's evaluation reads it (pam.train.clips) and cut into
BirdNET's 3-s windows every --hop seconds (a 4-s clip: windows at 0 and 1 s); each window's
1024-d embedding is cached under /tmp (keyed by BirdNET's model id, the clip table and the
hop), so later runs skip BirdNET. Then, for each direction (one site group trains, the
other is scored), pam.train.head_crosssite:

1. chooses the pooling (mean embedding, or maximum window score) by cross-validation inside
   the training site group only;
2. trains a linear head on the training site group (calibrated on its held-out recordings)
   and scores every clip of the other group, for --seeds;
3. adds k labelled clips of the new site group (--shots; half calls, half absences, --draws
   draws) and scores its remaining clips: threshold recalibrated on the k clips (head
   unchanged), and head retrained with them.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from pam.detect.birdnet import load_birdnet
from pam.train.clips import load_clip_set, load_clip_table
from pam.train.fit import clip_windows
from pam.train.head_crosssite import ADAPTATIONS, ClipEmbeddings, choose_pooling, cross_site, few_shot


def embed_clips(labels: Path, label: str, hop_s: float, cache_dir: Path) -> ClipEmbeddings:
    """BirdNET window embeddings [clips, windows, 1024] of the clip table, cached as .npz."""
    net = load_birdnet()
    clips = load_clip_table(labels)
    key = hashlib.sha256(f"{net.model_id}|{labels.resolve()}|{labels.read_bytes().hex()}|{hop_s}".encode()).hexdigest()[:16]
    cache = cache_dir / f"pam-bobwhite-birdnet-{key}.npz"
    positive = np.array([label in c.labels for c in clips])
    sites = np.array([str(c.site) for c in clips])
    recordings = np.array([c.recording for c in clips])
    if cache.is_file():
        with np.load(cache) as f:
            emb = f["embeddings"]
        print(f"embeddings from {cache}")
    else:
        t0 = time.perf_counter()
        data = load_clip_set(clips, [label], net.sample_rate)
        windows = [clip_windows(w, net.sample_rate, net.window_s, hop_s) for w in data.waves]
        if len({len(w) for w in windows}) != 1:
            raise SystemExit(f"{labels}: clips of unequal length give {sorted({len(w) for w in windows})} windows")
        stacked = torch.cat(windows)
        with torch.inference_mode():
            emb = torch.cat([net(stacked[i:i + 32])[1] for i in range(0, len(stacked), 32)]).numpy()
        emb = emb.reshape(len(clips), len(windows[0]), -1).astype(np.float32)
        np.savez(cache, embeddings=emb)
        print(f"{len(stacked)} windows of {len(clips)} clips embedded in {time.perf_counter() - t0:.1f} s -> {cache}")
    return ClipEmbeddings(emb, positive, sites, recordings, net.model_id, label)


def mean_sd(rows: list[dict], key: str) -> str:
    v = np.array([r[key] for r in rows], dtype=float)
    return f"{np.nanmean(v):.3f} ± {np.nanstd(v):.3f}"


def at_target(rows: list[dict]) -> str:
    """How many runs meet the issue's targets: AP >= 0.95, and precision >= 0.9 with recall >= 0.8
    at the head's calibrated threshold."""
    hit = sum(r["ap"] >= 0.95 and r["precision"] >= 0.9 and r["recall"] >= 0.8 for r in rows)
    return f"{hit} of {len(rows)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("labels", type=Path, help="clip table (path,label,site)")
    ap.add_argument("--label", default="bobwhite_covey")
    ap.add_argument("--hop", type=float, default=1.0, help="seconds between a clip's 3-s windows")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp"))
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = embed_clips(args.labels, args.label, args.hop, args.cache_dir)
    groups = sorted({str(s) for s in data.sites})
    print(f"{len(data.positive)} clips, {data.embeddings.shape[1]} windows each, sites {groups}")
    t0 = time.perf_counter()
    directions = [([a], [b]) for a in groups for b in groups if a != b]
    pooling = {}
    for train, _ in directions:
        pooling[train[0]], score = choose_pooling(data, train)
        print(f"pooling chosen inside {train[0]}: {pooling[train[0]]} "
              f"(5-fold score, mean of AP and recall at precision 0.9: {score})")
    print("\n| train -> test | pooling | AP | ROC-AUC | recall at precision 0.9 | "
          "calibrated threshold: precision | recall | F1 | runs at target |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for train, test in directions:
        rows = [cross_site(data, train, test, pooling[train[0]], seed=s) for s in args.seeds]
        print(f"| {train[0]} -> {test[0]} | {pooling[train[0]]} | " + " | ".join(
            mean_sd(rows, k) for k in ("ap", "roc_auc", "recall_at_precision", "precision", "recall", "f1"))
              + f" | {at_target(rows)} |")
    print(f"\nk labelled clips of the test site group ({args.draws} draws), scored on its other clips:\n")
    print("| train -> test | k | adaptation | AP | recall at precision 0.9 | "
          "calibrated threshold: precision | recall | draws at target |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for train, test in directions:
        for k in args.shots:
            for adaptation in ADAPTATIONS:
                rows = [few_shot(data, train, test, k, pooling[train[0]], adaptation, draw=d)
                        for d in range(args.draws)]
                print(f"| {train[0]} -> {test[0]} | {k} | {adaptation} | " + " | ".join(
                    mean_sd(rows, key) for key in ("ap", "recall_at_precision", "precision", "recall"))
                      + f" | {at_target(rows)} |")
    print(f"\nheads: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
