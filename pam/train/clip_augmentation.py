"""Augmented copies of labelled clips, made in the waveform and embedded like the originals.

A head on embeddings (``pam.train.head_crosssite``) sees only the backgrounds and gains of
the site group it is trained on. Here each training clip gets ``copies`` copies, each made
with ``pam.train.augment``'s transforms in the order of its training pipeline: a circular
time shift, a background overlaid at a random SNR, then a random gain. The background of a
copy is one whole clip-length segment: an absence clip of the same site group (never the
clip itself), or a segment of unlabelled field recordings of other habitats. Which
background each copy got is kept (``ClipCopies.background``), so a head cross-validated
inside the group can leave out the copies that carry a held-out clip's audio. A copy keeps
its clip's label and recording. Copies are embedded exactly as the originals (the same 3-s
windows, the same hop) and cached under a key of the settings, the seed, the clips and the
embedding model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from pam.train.augment import background_bank, overlay_background, random_gain, time_shift
from pam.train.clips import LabelledClip, load_audio
from pam.train.fit import clip_windows

AUGMENTS = ("none", "own", "own+field")
FIELD = -1  # ClipCopies.background of a copy overlaid with field audio


@dataclass(frozen=True)
class ClipCopies:
    """Window embeddings of augmented copies [copies, windows, dim]; per copy, the index of its
    original clip (in the clip table), its copy number (0 .. copies - 1) and the index of the
    absence clip overlaid on it (``FIELD``: field audio)."""

    embeddings: np.ndarray
    original: np.ndarray
    number: np.ndarray
    background: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.embeddings)
        if self.embeddings.ndim != 3 or not len(self.original) == len(self.number) == len(self.background) == n:
            raise ValueError(f"copy embeddings {self.embeddings.shape} need [copies, windows, dim] and one original, "
                             f"number and background per copy")


@dataclass(frozen=True)
class AugmentSettings:
    """How copies are made: ``copies`` per clip; SNR of the overlaid background and gain drawn
    uniformly in dB; circular shift of up to ``shift_s`` seconds; ``seed`` of the draws.
    ``field_share``: with field audio, copy numbers 1, 3, ... (every second copy) take a field
    segment and the others an absence clip of the group."""

    copies: int = 4
    snr_db: tuple[float, float] = (0.0, 20.0)
    gain_db: tuple[float, float] = (-12.0, 12.0)
    shift_s: float = 0.5
    seed: int = 0

    def key(self) -> str:
        return f"{self.copies}|{self.snr_db}|{self.gain_db}|{self.shift_s}|{self.seed}"


def field_recordings(root: Path, min_s: float = 4.0) -> list[Path]:
    """The declared field bank: every .wav under ``root`` of at least ``min_s`` seconds, except
    ``fish_queries`` (underwater recordings), sorted."""
    found = []
    for path in sorted(Path(root).rglob("*.wav")):
        if "fish_queries" in path.parts:
            continue
        if sf.info(str(path)).duration >= min_s:
            found.append(path)
    if not found:
        raise ValueError(f"{root}: no .wav field recording of {min_s:g} s or more; give another --field folder")
    return found


def field_bank(paths: list[Path], sample_rate: int, length: int) -> torch.Tensor:
    """Clip-length segments [m, length] of the field recordings at ``sample_rate`` (half-overlapping)."""
    waves = []
    for path in paths:
        duration = sf.info(str(path)).duration
        waves.append(load_audio(LabelledClip(path, 0.0, duration, (), None, str(path)), sample_rate))
    return background_bank(waves, length)


def augmented_waves(waves: np.ndarray, clip_ids: np.ndarray, absent: np.ndarray, sample_rate: int,
                    settings: AugmentSettings, field: torch.Tensor | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``settings.copies`` copies of each clip of ``waves`` [clips, samples] (ids ``clip_ids``):
    (copies [n, samples], original id, copy number, background id or ``FIELD``). Backgrounds are
    the clips where ``absent`` (other than the copy's own clip) or, with ``field``, a field
    segment for every second copy."""
    x = torch.as_tensor(np.asarray(waves, dtype=np.float32))
    own = np.flatnonzero(absent)
    if len(own) < 2:
        raise ValueError("augmented copies need at least 2 absence clips of the group for backgrounds")
    if field is not None and field.shape[1] < x.shape[1]:
        raise ValueError(f"field segments of {field.shape[1]} samples are shorter than the clips ({x.shape[1]})")
    g = torch.Generator().manual_seed(settings.seed)
    out, original, number, background = [], [], [], []
    for i in range(len(x)):
        for c in range(settings.copies):
            row = time_shift(x[i:i + 1], int(settings.shift_s * sample_rate), g)
            if field is not None and c % 2 == 1:
                bg = field[int(torch.randint(0, len(field), (1,), generator=g))][None, : x.shape[1]]
                source = FIELD
            else:
                choices = own[own != i]
                j = int(choices[int(torch.randint(0, len(choices), (1,), generator=g))])
                bg, source = x[j:j + 1], int(clip_ids[j])
            row, _ = overlay_background(row, bg, settings.snr_db, g)
            out.append(random_gain(row, settings.gain_db, g)[0])
            original.append(int(clip_ids[i]))
            number.append(c)
            background.append(source)
    return torch.stack(out).numpy(), np.array(original), np.array(number), np.array(background)


def embed_waves(net, waves: np.ndarray, hop_s: float, batch: int = 32) -> np.ndarray:
    """Window embeddings [clips, windows, dim] of equal-length ``waves`` by ``net`` (BirdNET);
    ValueError when the clips give different numbers of windows."""
    windows = [clip_windows(w, net.sample_rate, net.window_s, hop_s) for w in waves]
    if len({len(w) for w in windows}) != 1:
        raise ValueError(f"clips of unequal length give {sorted({len(w) for w in windows})} windows")
    stacked = torch.cat(windows)
    with torch.inference_mode():
        emb = torch.cat([net(stacked[i:i + batch])[1] for i in range(0, len(stacked), batch)]).numpy()
    return emb.reshape(len(waves), len(windows[0]), -1).astype(np.float32)


def copies_cache_key(model_id: str, clips: list[LabelledClip], clip_ids: np.ndarray, augment: str,
                     settings: AugmentSettings, hop_s: float, field: list[Path]) -> str:
    text = "|".join([model_id, augment, settings.key(), str(hop_s), ",".join(map(str, clip_ids)),
                     ";".join(f"{c.path}:{c.start_s}:{c.end_s}:{c.labels}" for c in clips),
                     ";".join(map(str, field))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_copies(path: Path, copies: ClipCopies) -> None:
    np.savez(path, embeddings=copies.embeddings, original=copies.original, number=copies.number,
             background=copies.background)


def load_copies(path: Path) -> ClipCopies:
    with np.load(path) as f:
        return ClipCopies(f["embeddings"], f["original"], f["number"], f["background"])
