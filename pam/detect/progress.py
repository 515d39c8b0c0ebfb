"""The detection run's progress bar, in hours of audio.

One run shows one bar. A run of one shard draws its own (``AudioBar(durations, True)``); the
shards of a run split over threads or worker processes each pass their changes, in
milliseconds, to one bar that the run draws (``audio_bar`` and a callable as ``progress``).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
from tqdm.auto import tqdm


class _AudioTqdm(tqdm):
    """tqdm with the speed as pam states it elsewhere: times real time (audio ms per wall ms)."""

    @property
    def format_dict(self):
        d = super().format_dict
        rate = d.get("rate")  # counted milliseconds of audio per second, before unit_scale
        if rate is None and d.get("elapsed"):
            rate = d["n"] / d["elapsed"]
        d["speed"] = f"{rate / 1000:,.0f}x real time" if rate else "?x real time"
        return d


def audio_bar(total_ms: int, enabled: bool = True, **options) -> tqdm:
    """The run's progress bar: hours of audio, counted in whole milliseconds, with the speed in
    times real time."""
    return _AudioTqdm(total=total_ms, unit="h", unit_scale=1 / 3_600_000, desc="audio", disable=not enabled,
                      bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} h audio [{elapsed}<{remaining}, {speed}]",
                      **options)


Progress = bool | Callable[[int], None]  # a bar of its own (True), none, or milliseconds passed to one shared bar


class AudioBar:
    """Progress in hours of audio: a recording advances with its scored windows, jumps to its
    length when it is finished, and is taken off again when it fails.

    Counted in whole milliseconds per recording (so the bar never passes its total through
    float rounding) and shown in hours through unit_scale. Given a callable instead of True,
    it passes each change in milliseconds to it (the shards of one run share one bar).
    """

    def __init__(self, durations: pd.Series, progress: Progress):
        self.file_ms = {int(i): int(round(float(d) * 1000)) if d == d else 0 for i, d in durations.items()}
        self.shown: dict[int, int] = {}
        self.bar = None if callable(progress) else audio_bar(sum(self.file_ms.values()), bool(progress))
        self.advance = progress if callable(progress) else self.bar.update

    def _show(self, i: int, ms: int) -> None:
        if ms != self.shown.get(i, 0):
            self.advance(ms - self.shown.get(i, 0))
        self.shown[i] = ms

    def scored(self, i: int, windows: int, hop_s: float) -> None:
        self._show(i, min(self.file_ms[i], int(windows * hop_s * 1000)))

    def finished(self, i: int) -> None:
        self._show(i, self.file_ms[i])

    def failed(self, i: int) -> None:
        ms = self.shown.pop(i, 0)
        if ms:
            self.advance(-ms)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
