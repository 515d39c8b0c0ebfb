"""Applying few-shot heads to stored embeddings: windows scored per second.

The embeddings are ``--n`` random 1024-d float16 rows in memory (as stored); the heads are
random weights of the right shapes (speed does not depend on the values). The reference, in
the same run, is plain numpy: each block converted to float32, one matmul, bias, sigmoid.
Each figure is the median of ``--repeat`` runs.

    python bench/bench_heads.py                 # 1,000,000 windows
    python bench/bench_heads.py --n 4000000     # 8 GB of embeddings
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pam.train.heads import Head, HeadCard  # noqa: E402

MODEL = "bench-embeddings"


def head(dim: int, classes: int, hidden: int, rng: np.random.Generator) -> Head:
    names = tuple(f"class{i}" for i in range(classes))
    card = HeadCard(MODEL, dim, names, {c: 0.5 for c in names}, "mlp" if hidden else "linear", hidden)
    if hidden:
        weights = {"w1": rng.standard_normal((dim, hidden)), "b1": rng.standard_normal(hidden),
                   "w2": rng.standard_normal((hidden, classes)), "b2": rng.standard_normal(classes)}
    else:
        weights = {"w1": rng.standard_normal((dim, classes)), "b1": rng.standard_normal(classes)}
    weights = {k: (v / np.sqrt(dim)).astype(np.float32) for k, v in weights.items()}
    weights["w1"] = weights["w1"].astype(np.float16).astype(np.float32)  # as train_head keeps it
    return Head(card, weights)


def numpy_reference(x: np.ndarray, h: Head, batch: int = 32768) -> np.ndarray:
    out = np.empty((len(x), len(h.card.classes)), dtype=np.float32)
    for start in range(0, len(x), batch):
        z = x[start:start + batch].astype(np.float32) @ h.weights["w1"] + h.weights["b1"]
        out[start:start + len(z)] = 1.0 / (1.0 + np.exp(-z))
    return out


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = np.empty((args.n, args.dim), dtype=np.float16)
    for start in range(0, args.n, 100_000):
        x[start:start + 100_000] = rng.standard_normal((min(100_000, args.n - start), args.dim))
    print(f"{args.n:,} windows x {args.dim} float16 ({x.nbytes / 1e9:.1f} GB), {args.threads} torch threads, "
          f"median of {args.repeat}")
    print(f"{'head':34} {'windows/s':>12} {'vs numpy':>9}")
    linear1 = head(args.dim, 1, 0, rng)
    ref = timed(lambda: numpy_reference(x, linear1), args.repeat)
    print(f"{'numpy reference, linear, 1 class':34} {args.n / ref:12,.0f} {1.0:9.2f}")
    for name, h in [("linear, 1 class", linear1), ("linear, 10 classes", head(args.dim, 10, 0, rng)),
                    ("MLP 64 hidden, 1 class", head(args.dim, 1, 64, rng)),
                    ("MLP 256 hidden, 10 classes", head(args.dim, 10, 256, rng))]:
        s = timed(lambda: h.scores(x, MODEL), args.repeat)
        print(f"{'Head.scores, ' + name:34} {args.n / s:12,.0f} {ref / s:9.2f}")
    np.testing.assert_allclose(linear1.scores(x[:1000], MODEL), numpy_reference(x[:1000], linear1), atol=1e-5)


if __name__ == "__main__":
    main()
