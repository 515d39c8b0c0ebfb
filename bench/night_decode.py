"""Decode only (no model) over a folder of many small recordings: the windows path against
the spans path with 0 and 1 reader threads, interleaved, medians. Usage:

    python bench/night_decode.py FOLDER [REPEATS]
"""
import sys, time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pam.detect.dataset import RecordingTask, WindowBatches
from pam.detect.span_batches import SpanBatches
files = sorted(Path(sys.argv[1]).rglob('*.wav'))
tasks = [RecordingTask(i, str(f), sf.info(f).samplerate, sf.info(f).frames) for i, f in enumerate(files)]
audio_s = sum(t.frames / t.sample_rate for t in tasks)
make = {"windows": lambda: WindowBatches(tasks, 16000, 3.0, 1.5, 256),
        "spans, 0 readers": lambda: SpanBatches(tasks, 16000, 3.0, 1.5, 256, readers=0),
        "spans, 1 reader": lambda: SpanBatches(tasks, 16000, 3.0, 1.5, 256, readers=1)}
times = {k: [] for k in make}
for r in range(int(sys.argv[2]) if len(sys.argv) > 2 else 3):
    for k, f in make.items():
        t = time.perf_counter(); n = sum(b["audio"].shape[0] for b in f()); times[k].append(time.perf_counter() - t)
for k, v in times.items():
    print(f"decode only, {k:18s}: {audio_s / np.median(v):7.0f}x real time ({len(tasks)} files, {audio_s / 3600:.2f} h, median of {len(v)})")
