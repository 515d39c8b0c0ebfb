"""Build the example recorder dump in examples/dump/ from the real bobwhite clips.

    python examples/make_example.py --data ../shared/data/bobwhite

Each file is a minute of real site background (absence clips of one site group, joined
end to end) with real covey-call presence clips put in at known 4-s slots; the slots are
written to examples/truth.csv. Clips come from GAMELab-UGA/NorthernBobwhiteCNN (MIT
licence, doi:10.1002/rse2.294); see examples/README.md. They overlap pam's training data,
so the dump is a demonstration of the pipeline, not an evaluation of the model.

Layout (what pam scans):

* AM-PINES/20240415_063000.WAV: AudioMoth style, PCM_16 WAV, 24 kHz, with the AudioMoth
  comment and artist in the WAV INFO chunk (WLFW_AL clips plus covey_clip.wav).
* SM4-CREEK/SM4CREEK_20240415_064500.flac and _070000.flac: Song Meter style names
  (WLFW_GA clips), FLAC to keep the repository small.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 24000
CLIP_S = 4.0
SLOTS = 15  # 15 x 4 s = 60 s per file
FADE_S = 0.01  # short fades at every join, so the joins do not click
SEED = 2024
HERE = Path(__file__).resolve().parent

# (site folder, file name, source site group, presence slots, AudioMoth start or None, extra presence clip)
FILES = [
    ("AM-PINES", "20240415_063000.WAV", "WLFW_AL", [2, 8, 13], "06:30:00 15/04/2024", "covey_clip.wav"),
    ("SM4-CREEK", "SM4CREEK_20240415_064500.flac", "WLFW_GA", [4, 11], None, None),
    ("SM4-CREEK", "SM4CREEK_20240415_070000.flac", "WLFW_GA", [1, 6, 12], None, None),
]
AUDIOMOTH_ID = "24A04F0B5D3C1E77"


def read_clip(path: Path) -> np.ndarray:
    x, rate = sf.read(path, dtype="float32", always_2d=True)
    if rate != RATE or len(x) != int(CLIP_S * RATE):
        raise SystemExit(f"{path}: expected {CLIP_S} s at {RATE} Hz, got {len(x) / rate:.2f} s at {rate} Hz")
    x = x.mean(axis=1)
    n = int(FADE_S * RATE)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, n, dtype=np.float32))
    x[:n] *= ramp
    x[-n:] *= ramp[::-1]
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data" / "bobwhite")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    labels = list(csv.DictReader(open(args.data / "labels.csv")))
    rng = np.random.default_rng(SEED)
    pools: dict[tuple[str, str], list[str]] = {}
    for site in ("WLFW_AL", "WLFW_GA"):
        for label in ("none", "bobwhite_covey"):
            names = sorted(r["path"] for r in labels if r["site"] == site and r["label"] == label)
            pools[(site, label)] = list(rng.permutation(names))
    dump = args.out / "dump"
    truth_rows, used_rows = [], []
    for folder, name, site, slots, am_start, extra in FILES:
        parts = []
        presence = [extra] if extra else []
        presence += [pools[(site, "bobwhite_covey")].pop() for _ in range(len(slots) - len(presence))]
        for k in range(SLOTS):
            if k in slots:
                src = presence[slots.index(k)]
                truth_rows.append({"file": f"{folder}/{name}", "start_s": k * CLIP_S, "end_s": (k + 1) * CLIP_S,
                                   "label": "bobwhite_covey", "source_clip": src})
            else:
                src = pools[(site, "none")].pop()
            used_rows.append({"file": f"{folder}/{name}", "slot_start_s": k * CLIP_S, "source_clip": src})
            parts.append(read_clip(args.data / src))
        audio = np.concatenate(parts)
        target = dump / folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if am_start:
            with sf.SoundFile(target, "w", RATE, 1, subtype="PCM_16", format="WAV") as snd:
                snd.write(audio)
                snd.comment = (f"Recorded at {am_start} (UTC) by AudioMoth {AUDIOMOTH_ID} at medium gain "
                               "while battery was 4.1V and temperature was 12.5C.")
                snd.artist = f"AudioMoth {AUDIOMOTH_ID}"
        else:
            sf.write(target, audio, RATE, subtype="PCM_16", format="FLAC")
        print(f"wrote {target.relative_to(args.out)} ({len(audio) / RATE:.0f} s, {target.stat().st_size / 1e6:.2f} MB)")
    with open(args.out / "truth.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["file", "start_s", "end_s", "label", "source_clip"])
        w.writeheader()
        w.writerows(truth_rows)
    with open(args.out / "sources.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["file", "slot_start_s", "source_clip"])
        w.writeheader()
        w.writerows(used_rows)
    print(f"wrote truth.csv ({len(truth_rows)} presence clips) and sources.csv ({len(used_rows)} slots)")


if __name__ == "__main__":
    main()
