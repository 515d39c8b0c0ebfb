"""Decode ceiling of the spans path's raw reader, WAV against FLAC: how many times real time
one core decodes, and what several reader threads reach. Usage:

    python bench/decode_ceiling.py SOURCE [--minutes 16] [--file-minutes 4] [--repeat 5] [--readers 1 2]

SOURCE: a folder of real recordings (mono or not, any rate); their audio, in path order, is
written once as WAV (PCM_16) and once as FLAC (PCM_16, soundfile's default compression) into
a scratch folder, both as the source's own short files and concatenated into files of
``--file-minutes`` (looped to ``--minutes`` in all). Then ``pam.detect.span_reader.SpanReader``
(raw int16 samples into staging buffers, no float conversion, no model) reads each dump with
each reader count, interleaved, ``--repeat`` times. Printed per dump and reader count (medians):
x real time by the wall clock, x real time per CPU second of the process (audio seconds over
user + system seconds of all its threads: a per-core figure that a busy machine disturbs much
less than the wall clock), and the wall figure per reader thread. The last lines multiply the
per-CPU-second figures by a core count (``--cores``, 16 by default): an extrapolation, not a
measurement (it assumes decoding scales linearly and that nothing else needs those cores).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pam.detect.dataset import RecordingTask  # noqa: E402
from pam.detect.span_reader import SpanReader  # noqa: E402


def source_audio(folder: Path) -> tuple[list[tuple[Path, np.ndarray]], int]:
    """The source files as int16 mono arrays, all at the most common rate (others left out)."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".wav", ".flac"))
    rates = [sf.info(f).samplerate for f in files]
    rate = max(set(rates), key=rates.count)
    out = []
    for f, r in zip(files, rates):
        if r == rate:
            a = sf.read(f, dtype="int16", always_2d=True)[0]
            out.append((f, a[:, 0].copy()))
    return out, rate


def write_dumps(audio: list[tuple[Path, np.ndarray]], rate: int, root: Path, minutes: float,
                file_minutes: float) -> dict[str, Path]:
    """WAV and FLAC dumps of the short files and of long files built from them."""
    dumps = {}
    for fmt, ext in (("WAV", ".wav"), ("FLAC", ".flac")):
        short = root / f"short-{ext[1:]}"
        for k, (_, a) in enumerate(audio):
            short.mkdir(parents=True, exist_ok=True)
            sf.write(short / f"f{k:04d}{ext}", a, rate, subtype="PCM_16", format=fmt)
        dumps[f"{len(audio)} short files, {fmt}"] = short
        joined = np.concatenate([a for _, a in audio])
        total = int(minutes * 60 * rate)
        per_file = int(file_minutes * 60 * rate)
        looped = np.resize(joined, total)
        long = root / f"long-{ext[1:]}"
        long.mkdir(parents=True, exist_ok=True)
        for k in range(0, total, per_file):
            sf.write(long / f"l{k // per_file:04d}{ext}", looped[k:k + per_file], rate, subtype="PCM_16", format=fmt)
        dumps[f"{minutes:g} min in {-(-total // per_file)} files of {file_minutes:g} min, {fmt}"] = long
    return dumps


def tasks_of(folder: Path) -> list[RecordingTask]:
    tasks = []
    for i, f in enumerate(sorted(folder.iterdir())):
        info = sf.info(f)
        tasks.append(RecordingTask(i, str(f), info.samplerate, info.frames))
    return tasks


def read_all(tasks: list[RecordingTask], readers: int) -> tuple[float, float, int]:
    """(wall s, CPU s of the process, frames read) for one pass of the raw reader."""
    reader = SpanReader(tasks, 16000, 3.0, 1.5, None, readers=readers, pinned=False)
    frames = 0
    c0, t0 = time.process_time(), time.perf_counter()
    for item in reader:
        data = getattr(item, "data", None)
        if data is None:
            raise RuntimeError(f"read failed: {item}")
        frames += data.shape[0]
        reader.pool.give(item.buffer)
    return time.perf_counter() - t0, time.process_time() - c0, frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("--minutes", type=float, default=16.0)
    ap.add_argument("--file-minutes", type=float, default=4.0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--readers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cores", type=int, default=16, help="core count of the extrapolation lines")
    ap.add_argument("--keep", type=Path, help="write the dumps here and keep them (default: a temp folder)")
    args = ap.parse_args()

    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; {os.cpu_count()} cores; "
          f"libsndfile {sf.__libsndfile_version__}")
    audio, rate = source_audio(args.source)
    root = args.keep or Path(tempfile.mkdtemp(prefix="pam-decode-"))
    try:
        dumps = write_dumps(audio, rate, root, args.minutes, args.file_minutes)
        tasks = {name: tasks_of(folder) for name, folder in dumps.items()}
        sizes = {name: sum(f.stat().st_size for f in folder.iterdir()) for name, folder in dumps.items()}
        audio_s = {name: sum(t.frames for t in ts) / rate for name, ts in tasks.items()}
        runs = {(name, r): [] for name in dumps for r in args.readers}
        for _ in range(args.repeat):  # interleaved: A B C ... A B C ...
            for (name, r), got in runs.items():
                wall, cpu, frames = read_all(tasks[name], r)
                assert frames >= audio_s[name] * rate * 0.999, (name, frames)  # every sample read
                got.append((wall, cpu))
        print(f"source: {args.source} ({len(audio)} files at {rate} Hz mono int16); median of {args.repeat}")
        print(f"{'dump':42s} {'MB':>6s} {'readers':>7s} {'x RT wall':>10s} {'x RT / reader':>13s} "
              f"{'x RT per CPU s':>14s} {'Msamples per CPU s':>18s}")
        per_cpu = {}
        for (name, r), got in runs.items():
            wall = float(np.median([w for w, _ in got]))
            cpu = float(np.median([c for _, c in got]))
            per_cpu.setdefault(name, []).append(audio_s[name] / cpu)
            print(f"{name:42s} {sizes[name] / 1e6:6.1f} {r:7d} {audio_s[name] / wall:10.0f} "
                  f"{audio_s[name] / wall / r:13.0f} {audio_s[name] / cpu:14.0f} "
                  f"{audio_s[name] * rate / cpu / 1e6:18.1f}")
        print(f"EXTRAPOLATION, not a measurement: x real time per CPU second (best of the reader counts) "
              f"x {args.cores} cores, assuming linear scaling and idle cores:")
        for name, figures in per_cpu.items():
            print(f"  {name:42s} ~{max(figures) * args.cores:,.0f}x real time on {args.cores} cores "
                  f"(~{max(figures) * args.cores * rate / 48000:,.0f}x for mono 48 kHz)")
        print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
