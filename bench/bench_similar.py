"""Vector search libraries on synthetic clustered embeddings: build time, query time, recall, size.

The data imitates a season of 1024-d BirdNET embeddings: ``--clusters`` Gaussian clusters of
uneven size (a few large ones, like wind and insect noise, and many small ones), each spread
along its own low-dimensional subspace plus a little isotropic noise, unit length, stored as
float16 on disk (``--workdir``). Queries are 20 new points from the same clusters, not in the
data. The reference is exact cosine search: a float32 matmul over every vector, in chunks.

Each library configuration runs in a fresh process that reads the data in chunks (no copy of
the whole set besides the index), so its figures do not mix: build time, memory the index
holds (resident memory after the build minus before), its file size, and for each search
setting the median and slowest of 20 single-query searches and recall@k against exact.

    python bench/bench_similar.py --n 2000000              # the issue's size (about 4 GB of data, 8 GB peak)
    python bench/bench_similar.py --n 200000 --libs usearch # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CONFIGS = {
    # name: (library, build settings, search settings swept after one build: HNSW ef, IVF nprobe)
    "faiss-ivf-sq8": ("faiss", {"factory": "SQ8"}, [16, 64, 256, 512]),
    "faiss-ivf-sqfp16": ("faiss", {"factory": "SQfp16"}, [16, 64, 256, 512]),
    "usearch-i8": ("usearch", {"dtype": "i8", "connectivity": 16, "expansion_add": 64}, [128, 512, 1024, 2048]),
    "usearch-bf16": ("usearch", {"dtype": "bf16", "connectivity": 16, "expansion_add": 64}, [128, 512, 1024, 2048]),
    "usearch-f16": ("usearch", {"dtype": "f16", "connectivity": 16, "expansion_add": 64}, [128, 512, 1024, 2048]),
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------- data


def cluster_model(dim: int, clusters: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(0.0, 1.5, clusters)  # uneven: the largest clusters hold most windows
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((16, 32, dim)).astype(np.float32) / np.sqrt(dim)
    return {"p": sizes / sizes.sum(), "centres": centres, "bases": bases,
            "spread": rng.uniform(0.3, 0.8, clusters).astype(np.float32)}


def draw(model: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors: centre + spread * (32-d subspace of the cluster's basis) + noise."""
    c = rng.choice(len(model["p"]), size=n, p=model["p"])
    dim = model["centres"].shape[1]
    z = rng.standard_normal((n, 32)).astype(np.float32)
    x = model["centres"][c].copy()
    for b in np.unique(c % 16):
        rows = np.flatnonzero(c % 16 == b)
        x[rows] += (z[rows] @ model["bases"][b]) * model["spread"][c[rows], None]
    x += rng.standard_normal((n, dim)).astype(np.float32) * (0.2 / np.sqrt(dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_data(path: Path, n: int, dim: int, clusters: int, queries: int, chunk: int, seed: int) -> np.ndarray:
    model = cluster_model(dim, clusters, seed)
    if not path.exists() or path.stat().st_size != n * dim * 2:
        rng = np.random.default_rng(seed + 1)
        with open(path.with_suffix(".tmp"), "wb") as f:
            for start in range(0, n, chunk):
                f.write(draw(model, min(chunk, n - start), rng).astype(np.float16).tobytes())
        os.replace(path.with_suffix(".tmp"), path)
    return draw(model, queries, np.random.default_rng(seed + 2)).astype(np.float16)


def read_chunks(path: Path, dim: int, chunk: int):
    """(start, float16 array) blocks read into fresh buffers: no memory map left resident."""
    with open(path, "rb") as f:
        start = 0
        while True:
            buf = f.read(chunk * dim * 2)
            if not buf:
                return
            block = np.frombuffer(buf, dtype=np.float16).reshape(-1, dim)
            yield start, block
            start += len(block)


def exact_topk(path: Path, dim: int, queries: np.ndarray, k: int, chunk: int) -> tuple[np.ndarray, float]:
    """Indices of the k most cosine-similar vectors per query (unit vectors: dot product)."""
    q = queries.astype(np.float32)
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), k), dtype=np.int64)
    t0 = time.perf_counter()
    for start, block in read_chunks(path, dim, chunk):
        s = block.astype(np.float32) @ q.T  # [chunk, queries]
        s_all = np.concatenate([best_s, s.T], axis=1)
        i_all = np.concatenate([best_i, np.arange(start, start + len(block))[None, :].repeat(len(q), 0)], axis=1)
        top = np.argpartition(-s_all, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(s_all, top, 1)
        best_i = np.take_along_axis(i_all, top, 1)
    return best_i, time.perf_counter() - t0


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


# ---------------------------------------------------------------------------- libraries


def build_usearch(path: Path, dim: int, chunk: int, settings: dict, threads: int):
    from usearch.index import Index

    index = Index(ndim=dim, metric="cos", dtype=settings["dtype"], connectivity=settings["connectivity"],
                  expansion_add=settings["expansion_add"])
    for start, block in read_chunks(path, dim, chunk):
        index.add(np.arange(start, start + len(block), dtype=np.uint64), block, threads=threads)
    return index


def search_usearch(index, q: np.ndarray, k: int, param: int) -> np.ndarray:
    index.expansion_search = param
    return np.asarray(index.search(q, k, threads=1).keys, dtype=np.int64).reshape(len(q), -1)


def save_usearch(index, path: Path) -> None:
    index.save(str(path))


def build_faiss(path: Path, dim: int, chunk: int, settings: dict, threads: int):
    import faiss

    faiss.omp_set_num_threads(threads)
    n = path.stat().st_size // (dim * 2)
    nlist = settings.get("nlist") or max(16, 2 ** int(np.log2(np.sqrt(n))))
    index = faiss.index_factory(dim, f"IVF{nlist},{settings['factory']}", faiss.METRIC_INNER_PRODUCT)
    train_n = min(n, 40 * nlist)
    # training sample: evenly spaced blocks of the file (the data are in random order)
    sample = np.concatenate([b[: max(1, train_n * len(b) // n)] for _, b in read_chunks(path, dim, chunk)])
    index.train(sample.astype(np.float32))
    del sample
    for _, block in read_chunks(path, dim, chunk):
        index.add(block.astype(np.float32))
    return index


def search_faiss(index, q: np.ndarray, k: int, param: int) -> np.ndarray:
    import faiss

    faiss.omp_set_num_threads(1)
    index.nprobe = param
    return index.search(q.astype(np.float32), k)[1]


def save_faiss(index, path: Path) -> None:
    import faiss

    faiss.write_index(index, str(path))


LIBS = {"usearch": (build_usearch, search_usearch, save_usearch),
        "faiss": (build_faiss, search_faiss, save_faiss)}


def data_path(args: argparse.Namespace) -> Path:
    return args.workdir / f"data-{args.n}-c{args.clusters}-s{args.seed}.f16"


def run_config(args: argparse.Namespace) -> dict:
    """One configuration, in this (fresh) process: build, save, search sweep."""
    lib, settings, params = CONFIGS[args.child]
    params = [int(p) for p in args.search.split(",")] if args.search else params
    build, search, save = LIBS[lib]
    queries = np.load(args.workdir / "queries.npy")
    truth = np.load(data_path(args).with_suffix(".truth.npy"))
    before = rss_bytes()
    t0 = time.perf_counter()
    index = build(data_path(args), args.dim, args.chunk, settings, args.threads)
    build_s = time.perf_counter() - t0
    held = rss_bytes() - before
    file = args.workdir / f"{args.child}.index"
    save(index, file)
    out = {"config": args.child, "n": args.n, "build_s": build_s, "memory_bytes": held,
           "disk_bytes": file.stat().st_size, "search": []}
    for p in params:
        search(index, queries[:1], args.k, p)  # warm up
        times, found = [], []
        for q in queries:
            t = time.perf_counter()
            found.append(search(index, q[None, :], args.k, p)[0])
            times.append(time.perf_counter() - t)
        out["search"].append({"param": p, "median_s": float(np.median(times)), "max_s": float(max(times)),
                              "recall": recall(np.array(found), truth)})
    if lib == "usearch":  # the same index served from its file, memory-mapped (how a season stays on disk)
        from usearch.index import Index

        del index
        view = Index.restore(str(file), view=True)
        view.expansion_search = params[-1]
        times = []
        for q in queries:
            t = time.perf_counter()
            view.search(q, args.k, threads=1)
            times.append(time.perf_counter() - t)
        out["view_median_s"] = float(np.median(times))
    file.unlink()
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def exact_in_memory_reference(path: Path, dim: int, queries: np.ndarray, k: int, max_rows: int) -> dict:
    """Brute force over float16 vectors held in memory, per query (the no-index baseline)."""
    from usearch.index import search as brute

    data = np.fromfile(path, dtype=np.float16, count=max_rows * dim).reshape(-1, dim)
    times = []
    for q in queries:
        t = time.perf_counter()
        brute(data, q, k, "cos", exact=True, threads=2)
        times.append(time.perf_counter() - t)
    return {"rows": len(data), "median_s": float(np.median(times))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--clusters", type=int, default=0, help="default: one per 1,000 vectors (2,000 at 2M)")
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=2, help="threads for building (queries use one)")
    ap.add_argument("--libs", default="usearch,faiss", help="comma-separated: usearch, faiss")
    ap.add_argument("--configs", default="", help="comma-separated config names (default: all of --libs)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-similar"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--search", default="", help="comma-separated search settings (default: each config's sweep)")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_config(args)))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.clusters = args.clusters or max(10, args.n // 1000)
    data = data_path(args)
    t0 = time.perf_counter()
    queries = make_data(data, args.n, args.dim, args.clusters, args.queries, args.chunk, args.seed)
    print(f"data: {args.n:,} x {args.dim} float16 in {data} ({data.stat().st_size / 1e9:.2f} GB, "
          f"{time.perf_counter() - t0:.0f} s)", flush=True)
    truth, exact_s = exact_topk(data, args.dim, queries, args.k, args.chunk)
    np.save(args.workdir / "queries.npy", queries)
    np.save(data.with_suffix(".truth.npy"), truth)
    print(f"exact reference: numpy float32 matmul over the file in chunks, {args.queries} queries at once: "
          f"{exact_s:.1f} s", flush=True)
    ref = exact_in_memory_reference(data, args.dim, queries, args.k, min(args.n, 1_000_000))
    print(f"exact reference: usearch brute force over {ref['rows']:,} float16 vectors in memory, one query, "
          f"2 threads: median {ref['median_s'] * 1000:.0f} ms", flush=True)
    libs = args.libs.split(",")
    names = args.configs.split(",") if args.configs else [c for c, (lib, _, _) in CONFIGS.items() if lib in libs]
    per_m = 1e6 / args.n
    print(f"\n{'config':18} {'build s':>8} {'MB/M mem':>9} {'MB/M disk':>9} {'search':>7} "
          f"{'median ms':>9} {'max ms':>7} {'recall@' + str(args.k):>10}", flush=True)
    for name in names:
        cmd = [sys.executable, __file__, "--child", name] + [f"--{a}={getattr(args, a)}" for a in
                                                             ("n", "dim", "k", "chunk", "threads", "workdir",
                                                              "clusters", "seed", "search")]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{name:18} failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        for i, s in enumerate(r["search"]):
            head = (f"{name:18} {r['build_s']:8.0f} {r['memory_bytes'] * per_m / 1e6:9.0f} "
                    f"{r['disk_bytes'] * per_m / 1e6:9.0f}") if i == 0 else " " * 47
            print(f"{head} {s['param']:7d} {s['median_s'] * 1000:9.1f} {s['max_s'] * 1000:7.1f} "
                  f"{s['recall']:10.3f}", flush=True)
        extra = f"; served memory-mapped from its file: median {r['view_median_s'] * 1000:.1f} ms" \
            if "view_median_s" in r else ""
        print(f"{'':18} peak resident {r['peak_rss_bytes'] / 1e9:.1f} GB{extra}", flush=True)


if __name__ == "__main__":
    main()
