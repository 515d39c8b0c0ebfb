"""Tiny synthetic labelled data and training configs for the training tests.

Clips are 0.75 s at 8 kHz: noise, with a 0.2-s up-sweep ("chirp") inside every 0.5-s crop of
the positives, and a steady 2.5 kHz tone ("tone") for a second class. A tiny network learns
them in a few epochs on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

RATE = 8000


def clip_audio(rng: np.random.Generator, labels: tuple[str, ...], seconds: float = 0.75) -> np.ndarray:
    x = (rng.normal(0, 0.05, int(seconds * RATE)) * rng.uniform(0.5, 2.0)).astype(np.float32)
    t = np.arange(int(0.2 * RATE)) / RATE
    if "chirp" in labels:
        f0 = rng.uniform(900, 1300)
        at = int(0.25 * RATE)
        x[at:at + len(t)] += (0.1 * np.sin(2 * np.pi * (f0 * t + 3000 * t**2)) * np.hanning(len(t))).astype(np.float32)
    if "tone" in labels:
        tt = np.arange(len(x)) / RATE
        x += (0.05 * np.sin(2 * np.pi * 2500 * tt)).astype(np.float32)
    return x


def write_clip_set(folder: Path, n: int, seed: int = 0, sites: tuple[str, ...] = ("S1", "S2"),
                   classes: tuple[str, ...] = ("chirp",)) -> Path:
    """``folder/labels.csv`` and ``folder/clips/*.wav``: n clips, every other one positive."""
    rng = np.random.default_rng(seed)
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        if len(classes) == 1:
            labels = (classes[0],) if i % 2 == 0 else ()
        else:
            labels = tuple(c for k, c in enumerate(classes) if (i >> k) & 1)
        name = f"clips/c{i:03d}.wav"
        sf.write(folder / name, clip_audio(rng, labels), RATE, subtype="PCM_16")
        rows.append(f"{name},{';'.join(labels) or 'none'},{sites[(i // 2) % len(sites)]}")  # both labels at every site
    (folder / "labels.csv").write_text("path,labels,site\n" + "\n".join(rows) + "\n")
    return folder / "labels.csv"


def write_backgrounds(folder: Path, n: int = 2, seconds: float = 2.0, seed: int = 9) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sf.write(folder / f"bg{i}.wav", (rng.normal(0, 0.03, int(seconds * RATE))).astype(np.float32), RATE)
    return folder


def tiny_config(folder: Path, **sections) -> Path:
    """A config for a tiny, fast model on the synthetic clips; ``sections`` override keys."""
    conf = {
        "data": {"tables": ["labels.csv"]},
        "split": {"val_fraction": 0.25, "seed": 0},
        "augment": {"overlay": {"p": 0.5, "snr_db": [5, 20]}, "gain_db": [-6, 6],
                    "specaugment": {"time_masks": 1, "time_width": 4, "freq_masks": 1, "freq_width": 3}},
        "model": {"name": "tiny", "window_s": 0.5, "width": 4, "stages": 2, "dropout": 0.0,
                  "spectrogram": {"sample_rate": RATE, "n_fft": 256, "hop_length": 128, "n_mels": 32,
                                  "f_min": 50, "f_max": 4000}},
        "train": {"epochs": 4, "batch_size": 16, "repeats": 2, "lr": 0.01, "patience": 50, "hop_s": 0.25,
                  "device": "cpu", "seed": 0},
        "output": {"dir": "runs"},
    }
    for dotted, value in sections.items():
        node = conf
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path
