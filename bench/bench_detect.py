"""Detection throughput and memory, measured against references in the same run.

Prints, for one set of recordings:
  forward  - the model alone on windows already in memory (the ceiling);
  decode   - reading + mono + resampling + cutting windows alone, batches on the device, no model;
  end2end  - `run_detection` on the dump into a fresh store (read, score, write);
decode and end2end once per data path (``detect.data_path``: windows, spans), interleaved;
and the share of the ceiling that the pipeline loses. With --memory it also runs detection
in fresh processes on a 10-minute and a 2-hour file and prints their peak memory.

Audio: the 96 real Song Meter SM4 recordings in ../shared/data/field/scikit-maad (10 s each,
22.05 kHz), concatenated and looped to the length asked for; synthetic noise when that
folder is absent. Usage:

    python bench/bench_detect.py [--minutes 30] [--repeat 3] [--device auto] [--batch-size 256] [--workers N]
                                 [--paths windows,spans] [--memory]

``--workers`` sets DataLoader workers for the windows path and reader threads for the spans path
(as ``detect.num_workers`` does); left out, each path takes its default.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
SM4 = ROOT.parent / "shared" / "data" / "field" / "scikit-maad" / "S4A03895"


def source_audio() -> tuple[np.ndarray, int, str]:
    files = sorted(SM4.glob("*.wav")) if SM4.is_dir() else []
    if files:
        parts = [sf.read(f, dtype="int16")[0] for f in files]
        return np.concatenate(parts), sf.info(files[0]).samplerate, f"{len(files)} real SM4 recordings (scikit-maad)"
    rng = np.random.default_rng(0)
    return (rng.standard_normal(22050 * 600) * 3000).astype(np.int16), 22050, "synthetic noise (real data absent)"


def write_long_file(path: Path, seconds: float, audio: np.ndarray, rate: int) -> None:
    """Loop ``audio`` to ``seconds`` and write it block by block (memory stays flat)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    total = int(seconds * rate)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        written = 0
        while written < total:
            n = min(len(audio), total - written)
            out.write(audio[:n])
            written += n


def make_dump(folder: Path, minutes: float, files: int = 6) -> tuple[Path, str]:
    audio, rate, what = source_audio()
    for i in range(files):
        write_long_file(folder / "SITE" / f"S4A03895_20190522_{i:02d}0000.wav", minutes * 60 / files,
                        np.roll(audio, i * 12345), rate)
    return folder, what


def bench_throughput(args: argparse.Namespace) -> dict:
    from pam.detect.checkpoint import load_checkpoint
    from pam.config import DetectConfig
    from pam.detect.dataset import RecordingTask, WindowBatches, make_loader
    from pam.detect.detection import default_readers, default_workers, resolve_device, run_detection
    from pam.detect.span_batches import SpanBatches
    from pam.io.manifest import scan
    from pam.store.store import Store

    device = resolve_device(args.device)
    workers = args.workers if args.workers is not None else default_workers(device)
    tmp = Path(tempfile.mkdtemp(prefix="pam-bench-"))
    dump, what = make_dump(tmp / "dump", args.minutes)
    model = load_checkpoint(args.model, device=device)
    card = model.card
    rows = scan(dump, Store(tmp / "scan-store")).rows
    tasks = [RecordingTask(i, r.path, int(r.sample_rate), int(r.frames)) for i, r in enumerate(rows.itertuples())]
    audio_s = float(rows["duration_s"].sum())
    hop_s = args.hop

    paths = args.paths.split(",")
    readers = args.workers if args.workers is not None else default_readers(device)

    def batches_of(path: str):
        if path == "spans":
            return SpanBatches(tasks, card.sample_rate, card.window_s, hop_s, args.batch_size, device=device,
                               readers=readers)
        ds = WindowBatches(tasks, card.sample_rate, card.window_s, hop_s, args.batch_size)
        return make_loader(ds, num_workers=workers, pin_memory=device.type == "cuda")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    net = model.net.eval()
    decode_t = {p: [] for p in paths}
    e2e_t = {p: [] for p in paths}
    forward_t = []
    detections = {}
    for r in range(args.repeat):  # interleaved, medians reported: this machine is noisy
        for path in paths:  # decode alone: batches of windows ready on the device, no model
            t = time.perf_counter()
            batches = [b["audio"].to(device) for b in batches_of(path) if b["audio"].shape[0]]
            sync()
            decode_t[path].append(time.perf_counter() - t)
        n_windows = sum(x.shape[0] for x in batches)

        # forward alone on the same windows, already in (device) memory
        ready = [x.to(device) for x in batches]
        with torch.inference_mode():
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                net(ready[0][:8])  # warm-up
                sync()
                t = time.perf_counter()
                for x in ready:
                    torch.sigmoid(net(x).float()).cpu()
                sync()
                forward_t.append(time.perf_counter() - t)
        del ready, batches

        for path in paths:  # end to end into a fresh store
            store = Store(tmp / f"store-{path}-{r}")
            t = time.perf_counter()
            report = run_detection(store, rows, model, DetectConfig(
                hop_s=hop_s, batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                data_path=path), progress=False)
            e2e_t[path].append(time.perf_counter() - t)
            detections[path] = report.detections
    forward_s = float(np.median(forward_t))
    out = {
        "audio": what, "audio_h": audio_s / 3600, "windows": n_windows, "device": str(device),
        "torch_threads": torch.get_num_threads(), "workers": workers, "readers": readers,
        "batch_size": args.batch_size, "forward_x": audio_s / forward_s,
        "windows_per_s_forward": n_windows / forward_s, "repeats": args.repeat, "paths": {},
    }
    for path in paths:
        decode_s, e2e_s = float(np.median(decode_t[path])), float(np.median(e2e_t[path]))
        out["paths"][path] = {
            "decode_x": audio_s / decode_s, "end2end_x": audio_s / e2e_s, "detections": detections[path],
            "end2end_over_forward_each": [f / e for f, e in zip(forward_t, e2e_t[path])],
            "loss_vs_forward": 1 - forward_s / e2e_s,
            "loss_vs_slower_stage": 1 - max(forward_s, decode_s) / e2e_s,
        }
    return out


def child_peak(path: Path, workers: int, args: argparse.Namespace) -> dict:
    """Run detection on one file in a fresh process; report its peak RSS (and its workers')."""
    code = f"""
import json, resource, tempfile
from pam.detect.checkpoint import load_checkpoint
from pam.config import DetectConfig
from pam.detect.detection import run_detection
from pam.io.manifest import scan
from pam.store.store import Store
tmp = tempfile.mkdtemp()
store = Store(tmp)
rows = scan({str(path.parent.parent)!r}, store).rows
run_detection(store, rows, load_checkpoint({args.model!r}), DetectConfig(num_workers={workers}, device="cpu"), progress=False)
print(json.dumps({{"self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                   "workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_memory(args: argparse.Namespace) -> dict:
    audio, rate, what = source_audio()
    tmp = Path(tempfile.mkdtemp(prefix="pam-mem-"))
    out = {"audio": what}
    for label, minutes in (("10min", 10), ("2h", 120)):
        f = tmp / label / "SITE" / "S4A03895_20190522_000000.wav"
        write_long_file(f, minutes * 60, audio, rate)
        for workers in (0, 1):
            peak = child_peak(f, workers, args)
            out[f"{label}_workers{workers}"] = peak
        f.unlink()
    for w in (0, 1):
        a, b = out[f"10min_workers{w}"], out[f"2h_workers{w}"]
        out[f"ratio_workers{w}"] = max(b["self_mb"], b["workers_mb"]) / max(a["self_mb"], a["workers_mb"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="audio in the throughput dump")
    ap.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--hop", type=float, default=1.5)
    ap.add_argument("--paths", default="windows,spans", help="data paths to measure, comma-separated")
    ap.add_argument("--repeat", type=int, default=3, help="measure each stage this many times, interleaved; medians")
    ap.add_argument("--memory", action="store_true", help="also measure peak memory, 10 min vs 2 h file")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    if not args.skip_throughput:
        r = bench_throughput(args)
        print(f"audio: {r['audio_h']:.2f} h of {r['audio']}, {r['windows']} windows, device {r['device']}, "
              f"{r['torch_threads']} torch threads, {r['workers']} loader workers (windows), {r['readers']} reader "
              f"threads (spans), batch {r['batch_size']}, medians of {r['repeats']} interleaved runs")
        print(f"forward only          : {r['forward_x']:9.1f} s audio / s  ({r['windows_per_s_forward']:.0f} windows/s)")
        for path, p in r["paths"].items():
            print(f"decode only, {path:8s} : {p['decode_x']:9.1f} s audio / s")
            print(f"end to end,  {path:8s} : {p['end2end_x']:9.1f} s audio / s  ({p['detections']} detections written; "
                  f"loses {100 * p['loss_vs_forward']:.0f}% against forward only; end to end / forward in each run: "
                  + ", ".join(f"{v:.2f}" for v in p["end2end_over_forward_each"]) + ")")
        print("json:", json.dumps(r))
    if args.memory:
        m = bench_memory(args)
        for w in (0, 1):
            a, b = m[f"10min_workers{w}"], m[f"2h_workers{w}"]
            print(f"peak memory, {w} workers: 10 min file {a['self_mb']:.0f} MB (workers {a['workers_mb']:.0f} MB), "
                  f"2 h file {b['self_mb']:.0f} MB (workers {b['workers_mb']:.0f} MB): ratio {m[f'ratio_workers{w}']:.2f}")
        print("json:", json.dumps(m))


if __name__ == "__main__":
    main()
