"""The similarity index in size-capped segments against one segment: search latency and recall, and
what a nightly update costs (peak resident memory, time, bytes written).

Data as in ``bench_similar.py``: synthetic clustered 1024-d unit vectors stored as float16 in
``--workdir``. Two indexes of ``pam.analysis.similarity`` are built from the first ``n - night``
vectors: *segmented* (``--segment`` vectors a segment) and *whole* (one segment: the cap above
``n``). Then:

* update: in a fresh process each, open the index as ``pam.analysis.store_index.update_index``
  does (``SimilarityIndex.open`` to add), add the last ``--night`` vectors and commit; peak
  resident memory (VmHWM, reset after the imports) minus the process's resident memory before opening, wall time,
  and bytes of the files the commit wrote. Each run works on a fresh copy of the built index;
  segmented and whole alternate (A B A B).
* search: on the updated indexes (``n`` vectors), memory-mapped (``view=True``, as ``pam similar``
  reads sealed segments), top ``--k`` of ``--queries`` new points, one query at a time,
  alternating segmented and whole per query; median and slowest latency, recall@k against
  exact float32 search over the data file.

    python bench/bench_index_segments.py                      # 200,000 vectors, segments of 50,000
    python bench/bench_index_segments.py --n 40000 --segment 10000 --night 2000   # a quick look
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_similar import exact_topk, make_data, read_chunks, recall, rss_bytes  # noqa: E402

MODEL = "bench-model"


def keys(start: int, n: int) -> tuple[list[str], np.ndarray]:
    """Window keys of vectors start..start+n: 1,200 windows (one hour of 3 s windows) a recording."""
    i = np.arange(start, start + n)
    return [f"rec-{r:06d}" for r in i // 1200], (i % 1200) * 144_000


def build(folder: Path, data: Path, dim: int, upto: int, segment: int, chunk: int) -> float:
    from pam.analysis.similarity import SimilarityIndex

    t0 = time.perf_counter()
    index = SimilarityIndex.create(folder, MODEL, dim, segment_vectors=segment)
    for start, block in read_chunks(data, dim, chunk):
        block = block[: max(0, upto - start)]
        if len(block):
            recs, starts = keys(start, len(block))
            index.add(recs, starts, block, MODEL)
    index.commit()
    return time.perf_counter() - t0


def update_child(args: argparse.Namespace) -> dict:
    """One nightly update in this fresh process: open to add, add the night, commit."""
    importlib.import_module("usearch.index")  # imported before the baseline, as a running pam has it

    from pam.analysis.similarity import SimilarityIndex, window_labels

    window_labels(["warm-up"], [0], MODEL)
    folder = Path(args.child)
    night = np.fromfile(args.data, dtype=np.float16, count=args.night * args.dim,
                        offset=(args.n - args.night) * args.dim * 2).reshape(-1, args.dim)
    recs, starts = keys(args.n - args.night, args.night)
    before_files = {p.name for p in folder.iterdir()}
    with open("/proc/self/clear_refs", "w") as f:  # restart the high-water mark (VmHWM) here
        f.write("5")
    base = rss_bytes()
    t0 = time.perf_counter()
    index = SimilarityIndex.open(folder)
    added = index.add(recs, starts, night, MODEL)
    index.commit()
    seconds = time.perf_counter() - t0
    written = sum(p.stat().st_size for p in folder.iterdir() if p.name not in before_files)
    return {"added": added, "seconds": seconds, "written": written, "segments": index.segment_counts,
            "peak_over_base": peak_rss_bytes() - base}


def peak_rss_bytes() -> int:
    """The process's resident high-water mark (VmHWM; ru_maxrss would also count the parent's at fork)."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--segment", type=int, default=50_000)
    ap.add_argument("--night", type=int, default=10_000, help="vectors the update adds")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2, help="update runs of each kind")
    ap.add_argument("--chunk", type=int, default=50_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-index-segments"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--data", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(update_child(args)))
        return
    from pam.analysis.similarity import SimilarityIndex

    args.workdir.mkdir(parents=True, exist_ok=True)
    data = args.workdir / f"data-{args.n}-d{args.dim}-s{args.seed}.f16"
    queries = make_data(data, args.n, args.dim, max(10, args.n // 1000), args.queries, args.chunk, args.seed)
    truth, _ = exact_topk(data, args.dim, queries, args.k, args.chunk)
    base = args.n - args.night
    kinds = {"segmented": args.segment, "whole": args.n + 1}
    for kind, cap in kinds.items():
        folder = args.workdir / f"{kind}-{base}-{cap}"
        if not (folder / "index.json").exists():
            shutil.rmtree(folder, ignore_errors=True)
            s = build(folder, data, args.dim, base, cap, args.chunk)
            print(f"built {kind}: {base:,} vectors in {s:.0f} s", flush=True)
        print(f"{kind}: segments {SimilarityIndex.open(folder, view=True).segment_counts}", flush=True)

    print(f"\nupdate: open to add, add {args.night:,} vectors, commit (fresh process each, A B A B)", flush=True)
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind, cap in kinds.items():
            work = args.workdir / f"run-{kind}"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(args.workdir / f"{kind}-{base}-{cap}", work)
            cmd = [sys.executable, __file__, f"--child={work}", f"--data={data}", f"--n={args.n}",
                   f"--night={args.night}", f"--dim={args.dim}"]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            results[kind].append(r)
            print(f"  {kind:10} peak RSS over start {r['peak_over_base'] / 1e6:7.0f} MB  {r['seconds']:6.1f} s  "
                  f"wrote {r['written'] / 1e6:6.0f} MB  segments after {r['segments']}", flush=True)

    print(f"\nsearch: top-{args.k}, {args.queries} queries one at a time, memory-mapped, alternating", flush=True)
    views = {k: SimilarityIndex.open(args.workdir / f"run-{k}", view=True) for k in kinds}
    for v in views.values():
        v.search(queries[0], k=args.k)  # warm: map the files
    times: dict[str, list[float]] = {k: [] for k in kinds}
    found: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    for q in queries:
        for kind, v in views.items():
            t = time.perf_counter()
            hits = v.search(q, k=args.k)
            times[kind].append(time.perf_counter() - t)
            recs = hits["recording_id"].str.slice(4).astype(int).to_numpy()
            found[kind].append(recs * 1200 + hits["start_sample"].to_numpy() // 144_000)
    for kind in kinds:
        print(f"  {kind:10} median {np.median(times[kind]) * 1000:7.1f} ms  slowest {max(times[kind]) * 1000:7.1f} ms"
              f"  recall@{args.k} {recall(np.array(found[kind]), truth):.3f}", flush=True)
    print(f"\nmachine: {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f} at the end", flush=True)


if __name__ == "__main__":
    main()
