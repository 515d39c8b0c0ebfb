"""Small synthetic audio for tests: tones, chirps, noise, and recorder-style dumps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def noise(seconds: float, rate: int, level: float = 0.02, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(round(seconds * rate))) * level).astype(np.float32)


def tone(seconds: float, rate: int, freq: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def chirp(seconds: float, rate: int, f0: float = 1500.0, f1: float = 3500.0, level: float = 0.3) -> np.ndarray:
    """An upward sweep with a smooth envelope: a stand-in for a bird call."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    env = np.sin(np.pi * np.arange(n) / max(1, n - 1)) ** 2
    return (level * env * np.sin(phase)).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, rate: int, comment: str | None = None,
              subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1 if audio.ndim == 1 else audio.shape[1],
                      subtype=subtype, format="WAV" if path.suffix.lower() == ".wav" else "FLAC") as f:
        if comment:
            f.comment = comment
        f.write(audio)
    return path


def audiomoth_comment(when: str, device: str = "24526B065D325963", offset: str = "") -> str:
    """``when`` as 'HH:MM:SS DD/MM/YYYY'; offset like '+2' or '-03:30'."""
    return (f"Recorded at {when} (UTC{offset}) by AudioMoth {device} at medium gain "
            "while battery was 4.1V and temperature was 12.5C.")
