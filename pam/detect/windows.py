"""Window arithmetic: where each analysis window starts, in samples of the file's own rate.

Pure functions, no I/O. Offsets are integers so that a window's position is exact and
reproducible: window k starts at ``round(k * hop_s * rate)``. A window is emitted while it
starts inside the file and the previous window did not already reach the end; the last one
may run past the end and is zero-padded. With ``hop_s > window_s`` the gaps between
windows are simply not analysed (duty-cycled analysis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowGrid:
    """The windows of one recording at its own sample rate."""

    sample_rate: int
    frames: int
    window: int  # window length in samples
    starts: np.ndarray  # int64 start sample of each window

    def __len__(self) -> int:
        return len(self.starts)

    def start_seconds(self) -> np.ndarray:
        return self.starts / self.sample_rate

    def end_seconds(self) -> np.ndarray:
        return (self.starts + self.window) / self.sample_rate


def to_samples(seconds: float, sample_rate: int) -> int:
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {seconds} s")
    n = round(seconds * sample_rate)
    if n < 1:
        raise ValueError(f"{seconds} s is shorter than one sample at {sample_rate} Hz")
    return n


def window_grid(frames: int, sample_rate: int, window_s: float, hop_s: float) -> WindowGrid:
    """All windows of a recording."""
    win = to_samples(window_s, sample_rate)
    to_samples(hop_s, sample_rate)  # rejects a hop shorter than one sample
    hop = hop_s * sample_rate
    if frames <= 0:
        return WindowGrid(sample_rate, max(frames, 0), win, np.zeros(0, dtype=np.int64))
    candidates = math.ceil(frames / hop) + 1
    starts = np.round(np.arange(candidates, dtype=np.float64) * hop).astype(np.int64)
    keep = starts < frames
    keep[1:] &= starts[:-1] + win < frames  # the previous window did not reach the end
    return WindowGrid(sample_rate, frames, win, starts[keep])


def scored_seconds(frames: int, sample_rate: int, window_s: float, hop_s: float) -> float:
    """Seconds of the recording that some window covers: all of it when windows overlap or
    touch, less when ``hop_s > window_s`` leaves gaps (duty cycling). The effort behind the
    detections, stored as ``done.audio_s``."""
    grid = window_grid(frames, sample_rate, window_s, hop_s)
    if not len(grid):
        return 0.0
    ends = np.minimum(grid.starts + grid.window, frames)
    next_starts = np.append(grid.starts[1:], frames)
    covered = np.minimum(ends, next_starts) - grid.starts
    return float(covered.sum()) / sample_rate


def window_count(frames: int, sample_rate: int, window_s: float, hop_s: float) -> int:
    """How many windows a recording of ``frames`` samples yields."""
    return len(window_grid(frames, sample_rate, window_s, hop_s))
