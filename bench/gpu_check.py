"""One prepared GPU check for issue 14, to run in a single call on a lent GPU machine.

Installs nothing and needs no network: it uses the installed venv (torch with CUDA), the
bundled model, and BirdNET when the birdnet extra is installed (else it says so and skips it).
For each model (the bundled model at hop 1.5 s, BirdNET at hop 3 s, i.e. no overlap) it prints,
for both data paths (``detect.data_path`` windows and spans), in one run:
  forward  - the model alone on windows already in device memory (the ceiling);
  decode   - batches of windows ready on the device, no model;
  end2end  - ``run_detection`` into a fresh store (commits included);
and the largest score difference between bf16 autocast and fp32 on one batch (the contract
allows bf16 only where it stays within 1e-3). Then the whole ``pam detect --no-prefect``
process on the same dump, per data path. Audio: the real SM4 recordings when
../shared/data is there, else synthetic noise; looped to ``--minutes``.

    python bench/gpu_check.py --minutes 600 --device cuda          # on the GPU machine
    python bench/gpu_check.py --minutes 2 --device cpu --repeat 1  # a check that it runs
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_detect import make_dump  # noqa: E402
from pam.config import DetectConfig  # noqa: E402
from pam.detect.checkpoint import load_checkpoint  # noqa: E402
from pam.detect.contract import DetectionModel, TorchModel  # noqa: E402
from pam.detect.dataset import RecordingTask, WindowBatches, make_loader  # noqa: E402
from pam.detect.detection import default_readers, default_workers, resolve_device, run_detection  # noqa: E402
from pam.detect.span_batches import SpanBatches  # noqa: E402
from pam.io.manifest import scan  # noqa: E402
from pam.store.store import Store  # noqa: E402

PATHS = ("windows", "spans")


def models(device: torch.device) -> list[tuple[DetectionModel, float]]:
    out: list[tuple[DetectionModel, float]] = [(load_checkpoint(None, device=device), 1.5)]
    try:
        from pam.detect.birdnet import load_birdnet

        bn = load_birdnet(device)
        out.append((TorchModel(bn, bn.model_id, "birdnet-v2.4", bn.sample_rate, bn.window_s, bn.classes,
                               autocast=False), 3.0))
    except Exception as exc:  # noqa: BLE001 - the check goes on with the bundled model
        print(f"BirdNET skipped: {str(exc).splitlines()[0]}")
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def batches(path: str, tasks, model: DetectionModel, hop_s: float, args, device: torch.device):
    if path == "spans":
        return SpanBatches(tasks, model.sample_rate, model.window_s, hop_s, args.batch_size, device=device,
                           readers=args.readers if args.readers is not None else default_readers(device))
    ds = WindowBatches(tasks, model.sample_rate, model.window_s, hop_s, args.batch_size)
    workers = args.workers if args.workers is not None else default_workers(device)
    return make_loader(ds, num_workers=workers, pin_memory=device.type == "cuda")


def check_model(model: DetectionModel, hop_s: float, rows, tmp: Path, args, device: torch.device) -> None:
    tasks = [RecordingTask(i, r.path, int(r.sample_rate), int(r.frames)) for i, r in enumerate(rows.itertuples())]
    audio_s = float(rows["duration_s"].sum())
    decode = {p: [] for p in PATHS}
    e2e = {p: [] for p in PATHS}
    forward = []
    for r in range(args.repeat):
        for path in PATHS:
            t = time.perf_counter()
            ready = [b["audio"].to(device) for b in batches(path, tasks, model, hop_s, args, device)
                     if b["audio"].shape[0]]
            sync(device)
            decode[path].append(time.perf_counter() - t)
        with torch.inference_mode():
            enabled = device.type == "cuda" and model.autocast
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled):
                model.forward(ready[0][:8])
                sync(device)
                t = time.perf_counter()
                for x in ready:
                    model.forward(x).scores.float().cpu()
                sync(device)
                forward.append(time.perf_counter() - t)
            if r == 0 and device.type == "cuda":
                fp32 = model.forward(ready[0]).scores.float()
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    bf16 = model.forward(ready[0]).scores.float()
                print(f"{model.name}: bf16 autocast vs fp32, max score difference on {len(ready[0])} windows: "
                      f"{float((bf16 - fp32).abs().max()):.2e} (autocast {'on' if model.autocast else 'off'} "
                      "in the pipeline)")
        del ready
        for path in PATHS:
            t = time.perf_counter()
            run_detection(Store(tmp / f"store-{model.name}-{path}-{r}"), rows, model,
                          DetectConfig(hop_s=hop_s, batch_size=args.batch_size, device=device.type, data_path=path,
                                       num_workers=args.readers if path == "spans" else args.workers),
                          progress=False)
            e2e[path].append(time.perf_counter() - t)
    line = f"{model.name}, hop {hop_s} s, {audio_s / 3600:.2f} h, batch {args.batch_size}, medians of {args.repeat}: "
    print(line + f"forward only {audio_s / np.median(forward):,.0f}x real time")
    for path in PATHS:
        print(f"  {path:8s}: decode only {audio_s / np.median(decode[path]):,.0f}x, "
              f"end to end {audio_s / np.median(e2e[path]):,.0f}x real time")


def check_process(dump: Path, tmp: Path, args) -> None:
    """The whole `pam detect --no-prefect` process (imports, scan, detection, commits, summaries),
    per data path, and on the spans path once more with one worker process per GPU
    (``--devices``, or every GPU when the machine has several)."""
    runs = [(path, args.device) for path in PATHS]
    devices = args.devices or (",".join(f"cuda:{k}" for k in range(torch.cuda.device_count()))
                               if torch.cuda.device_count() > 1 else None)
    if devices:
        runs.append(("spans", devices))
    for path, device in runs:
        conf = tmp / f"{path}.yaml"
        conf.write_text(f"detect:\n  data_path: {path}\n  batch_size: {args.batch_size}\n")
        store = tmp / f"cli-{path}-{device.replace(',', '+').replace(':', '')}"
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "pam.cli", "detect", str(dump), "--store", str(store),
                              "--no-prefect", "--show", "0", "--device", device, "-c", str(conf)],
                             capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        wall = time.perf_counter() - t
        lines = res.stdout.strip().splitlines() or [""]
        last = next((ln for ln in lines if ln.startswith("run ")), lines[-1]) if res.returncode == 0 \
            else res.stderr.strip()[-300:]
        print(f"pam detect --no-prefect, {path}, --device {device}: {wall:.1f} s for the whole process "
              f"(exit {res.returncode}): {last}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=600.0)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (windows path)")
    ap.add_argument("--readers", type=int, default=None, help="reader threads (spans path)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-process", action="store_true")
    ap.add_argument("--devices", default=None, help="also run the whole process on these devices, one worker "
                                                    "each (e.g. cuda:0,cuda:1; default: every GPU when several)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="pam-gpu-check-"))
    dump, what = make_dump(tmp / "dump", args.minutes, files=args.files)
    rows = scan(dump, Store(tmp / "scan-store")).rows
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, {args.minutes / 60:.2f} h of {what} in {args.files} files")
    for model, hop_s in models(device):
        check_model(model, hop_s, rows, tmp, args, device)
    if not args.skip_process:
        check_process(dump, tmp, args)


if __name__ == "__main__":
    main()
