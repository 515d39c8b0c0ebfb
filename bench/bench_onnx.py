"""How to run ONNX models: ONNX Runtime against a conversion to PyTorch (onnx2torch), with the
PyTorch checkpoint itself as the reference, on the same windows, threads and batches, in one run.

Exports the bundled model (or --model CKPT) to ONNX, then times, per batch of windows:
  torch     - the checkpoint in PyTorch (the reference);
  ort       - the exported file in ONNX Runtime (what pam uses for --model X.onnx);
  onnx2torch - the exported file converted to a PyTorch module (reported as failed when the
              converter cannot take the graph);
and prints each one's milliseconds per window, its speed relative to torch, its largest
score difference from torch, and the installed size of each runtime's packages. Usage:

    python bench/bench_onnx.py [--model CKPT] [--batch 64] [--repeat 5] [--threads N]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pam, also when another is installed


def installed_mb(*dists: str) -> str:
    """Installed size of ``dists`` (files listed in their RECORD), or 'not installed'."""
    total = 0
    for name in dists:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            return "not installed"
        for f in dist.files or []:
            p = Path(dist.locate_file(f))
            total += p.stat().st_size if p.is_file() else 0
    return f"{total / 1e6:.0f} MB"


def timed(fn, batch: torch.Tensor, repeat: int) -> tuple[float, np.ndarray]:
    with torch.inference_mode():
        out = fn(batch)  # warm-up
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = fn(batch)
            best = min(best, time.perf_counter() - t0)
    return best * 1000 / batch.shape[0], np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint; default: the bundled model")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from pam.detect.checkpoint import load_checkpoint
    from pam.detect.onnx_export import export_onnx
    from pam.detect.onnx_model import load_onnx_model

    model = load_checkpoint(args.model)
    folder = Path(tempfile.mkdtemp(prefix="pam-bench-onnx-"))
    t0 = time.perf_counter()
    path, _, _ = export_onnx(model, folder / "model.onnx")
    export_s = time.perf_counter() - t0
    batch = 0.05 * torch.randn(args.batch, model.window_samples, generator=torch.Generator().manual_seed(0))
    print(f"model {model.describe()}: {model.window_s:g} s windows at {model.sample_rate} Hz, batch {args.batch}, "
          f"{args.threads} threads, best of {args.repeat}; export took {export_s:.1f} s")

    rows = []
    ref_ms, ref = timed(lambda x: model.forward(x).scores.numpy(), batch, args.repeat)
    rows.append(("torch (checkpoint)", ref_ms, 0.0, installed_mb("torch")))
    ort_model = load_onnx_model(path)
    ms, out = timed(lambda x: ort_model.forward(x).scores.numpy(), batch, args.repeat)
    rows.append(("onnxruntime", ms, float(np.abs(out - ref).max()), installed_mb("onnxruntime")))
    try:
        from onnx2torch import convert

        converted = convert(str(path)).eval()
        ms, out = timed(lambda x: converted(x)[0].numpy(), batch, args.repeat)
        rows.append(("onnx2torch", ms, float(np.abs(out - ref).max()),
                     installed_mb("onnx2torch", "onnx", "torchvision")))
    except ImportError:
        rows.append(("onnx2torch", None, "not installed", "n/a"))
    except Exception as exc:  # noqa: BLE001 - a converter that cannot take the graph is a result
        first = str(exc).strip().splitlines()[0][:100]
        rows.append(("onnx2torch", None, f"failed: {type(exc).__name__}: {first}",
                     installed_mb("onnx2torch", "onnx", "torchvision")))

    print(f"{'runtime':<20} {'ms/window':>10} {'vs torch':>9}  {'max |score diff|':<18} packages")
    for name, ms, diff, size in rows:
        speed = f"{ref_ms / ms:8.2f}x" if ms else f"{'-':>9}"
        ms_text = f"{ms:10.3f}" if ms else f"{'-':>10}"
        diff_text = f"{diff:.1e}" if isinstance(diff, float) else diff
        print(f"{name:<20} {ms_text} {speed}  {diff_text:<18} {size}")


if __name__ == "__main__":
    main()
