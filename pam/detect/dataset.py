"""Batches of analysis windows, decoded by DataLoader workers while the device computes.

Each worker takes every n-th recording, reads it span by span (never the whole file),
mixes to mono, resamples to the model's rate and cuts windows. Windows from consecutive
recordings are packed into full batches, so a dump of short files still feeds the device
big batches. Each batch also says which recordings it completes and which failed, so the
caller can commit a recording as soon as its last window is scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pam.io.audio import AudioError, is_transient, read_span, resample
from pam.detect.windows import WindowGrid, window_grid


@dataclass(frozen=True)
class RecordingTask:
    """What a worker needs to read one recording; ``index`` is the caller's handle."""

    index: int
    path: str
    sample_rate: int
    frames: int


@dataclass
class WindowChunk:
    """Consecutive windows of one recording; ``last`` when they end it."""

    rec: int
    starts: np.ndarray  # start samples in the file's rate
    audio: torch.Tensor  # [n, window samples at the model rate]
    last: bool  # holds the recording's final window


def _spans(grid: WindowGrid, max_span: int) -> Iterator[tuple[int, int]]:
    """Group consecutive windows whose joint span fits in ``max_span`` samples."""
    i, n = 0, len(grid)
    while i < n:
        j = i + 1
        while j < n and grid.starts[j] + grid.window - grid.starts[i] <= max_span:
            j += 1
        yield i, j
        i = j


@dataclass(frozen=True)
class Span:
    """Windows ``i:j`` of a grid, resampled together from input samples ``lo:hi`` of the file
    (``lo`` may be negative and ``hi`` past the end: those samples are zeros)."""

    i: int
    j: int
    lo: int
    hi: int


def read_failure(exc: BaseException, path: str) -> tuple[str, bool]:
    """(one-line reason, transient) of a recording that failed to read."""
    reason = exc.reason if isinstance(exc, AudioError) else f"{type(exc).__name__}: {exc}"
    line = reason.strip().splitlines()[0] if reason and reason.strip() else "read failed"
    return line, is_transient(exc, path)


def resample_context(rate: int, target_rate: int) -> int:
    """Input samples read on both sides of a span so that the resampling filter has real
    neighbours at its edges: a whole number of resampling periods (rate / gcd input samples map
    to a whole number of output samples), so that windows land on exact output samples."""
    if rate == target_rate:
        return 0
    period = rate // math.gcd(rate, target_rate)
    return period * math.ceil(32 * max(1.0, rate / target_rate) / period)


def span_plan(grid: WindowGrid, target_rate: int, max_span_s: float = 120.0) -> list[Span]:
    """The spans a recording is read and resampled in, the same for both data paths."""
    ctx = resample_context(grid.sample_rate, target_rate)
    max_span = max(grid.window, int(max_span_s * grid.sample_rate))
    return [Span(i, j, int(grid.starts[i]) - ctx, int(grid.starts[j - 1]) + grid.window + ctx)
            for i, j in _spans(grid, max_span)]


def span_windows(wave: torch.Tensor, starts: np.ndarray, lo: int, rate: int, target_rate: int,
                 window_s: float) -> torch.Tensor:
    """Windows [n, target samples] at ``starts`` of a span's mono input ``wave`` (input samples
    ``lo``..): resampled as a whole, zero-padded after the end, cut as a strided view."""
    if rate != target_rate:
        wave = resample(wave, rate, target_rate)
    return cut_span(wave, starts, lo, rate, target_rate, window_s)


def cut_span(wave: torch.Tensor, starts: np.ndarray, lo: int, rate: int, target_rate: int,
             window_s: float) -> torch.Tensor:
    """Windows [n, target samples] at ``starts`` of a span already resampled to ``target_rate``."""
    out_len = round(window_s * target_rate)
    offsets = np.round((starts - lo) * (target_rate / rate)).astype(np.int64)
    need = int(offsets[-1]) + out_len
    if wave.shape[0] < need:
        wave = torch.nn.functional.pad(wave, (0, need - wave.shape[0]))
    return cut_windows(wave, offsets, out_len)


def read_windows(
    snd: sf.SoundFile,
    grid: WindowGrid,
    target_rate: int,
    window_s: float,
    channel: int | None = None,
    max_span_s: float = 120.0,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Yield (start samples, windows [n, target samples]) span by span."""
    for span in span_plan(grid, target_rate, max_span_s):
        starts = grid.starts[span.i:span.j]
        wave = torch.from_numpy(read_span(snd, span.lo, span.hi - span.lo, channel))
        yield starts, span_windows(wave, starts, span.lo, grid.sample_rate, target_rate, window_s)


def cut_windows(wave: torch.Tensor, offsets: np.ndarray, length: int) -> torch.Tensor:
    """Windows [n, length] at ``offsets``: a strided view when they are evenly spaced (the usual
    case), else one copy per window; an index tensor of n x length would cost more than the model."""
    steps = np.diff(offsets)
    if len(offsets) > 1 and steps[0] > 0 and (steps == steps[0]).all():
        return wave[int(offsets[0]):].unfold(0, length, int(steps[0]))[: len(offsets)]
    return torch.stack([wave[int(o) : int(o) + length] for o in offsets])


_cut = cut_windows  # the name tests/test_audio.py knows


class WindowBatches(IterableDataset):
    """Iterable of batch dicts: audio [B, samples], rec [B], start [B], finished, errors.

    ``errors`` holds ``(rec, one-line reason, transient)``; transient errors (I/O) are worth
    a retry, the others are properties of the file.
    """

    def __init__(
        self,
        tasks: list[RecordingTask],
        target_rate: int,
        window_s: float,
        hop_s: float,
        batch_size: int,
        channel: int | None = None,
        max_span_s: float = 120.0,
    ):
        self.tasks = tasks
        self.target_rate = target_rate
        self.window_s = window_s
        self.hop_s = hop_s
        self.batch_size = batch_size
        self.channel = channel
        self.max_span_s = max_span_s

    def _my_tasks(self) -> list[RecordingTask]:
        info = get_worker_info()
        if info is None:
            return self.tasks
        return self.tasks[info.id :: info.num_workers]

    def _chunks(self, task: RecordingTask) -> Iterator[WindowChunk]:
        grid = window_grid(task.frames, task.sample_rate, self.window_s, self.hop_s)
        with sf.SoundFile(task.path) as snd:
            if snd.samplerate != task.sample_rate:
                raise AudioError("changed", f"sample rate changed since the scan ({task.sample_rate} -> {snd.samplerate} Hz)")
            prev = None  # held back one step so the final chunk can be marked
            for starts, audio in read_windows(snd, grid, self.target_rate, self.window_s,
                                              self.channel, self.max_span_s):
                if prev is not None:
                    yield WindowChunk(task.index, *prev, last=False)
                prev = (starts, audio)
            if prev is not None:
                yield WindowChunk(task.index, *prev, last=True)

    def __iter__(self) -> Iterator[dict]:
        buffer: list[WindowChunk] = []
        buffered = 0
        errors: list[tuple[int, str, bool]] = []
        for task in self._my_tasks():
            try:
                for chunk in self._chunks(task):
                    buffer.append(chunk)
                    buffered += len(chunk.starts)
                    while buffered >= self.batch_size:
                        batch, buffer, buffered = take_batch(buffer, self.batch_size)
                        batch["errors"], errors = errors, []
                        yield batch
            except Exception as exc:  # noqa: BLE001 - one bad file must never stop the others
                buffer = [c for c in buffer if c.rec != task.index]
                buffered = sum(len(c.starts) for c in buffer)
                errors.append((task.index, *read_failure(exc, task.path)))
        while buffer or errors:
            batch, buffer, buffered = take_batch(buffer, self.batch_size)
            batch["errors"], errors = errors, []
            yield batch


def take_batch(buffer: list[WindowChunk], n: int) -> tuple[dict, list[WindowChunk], int]:
    """A batch dict of the first ``n`` windows of ``buffer`` (a chunk split where needed), the rest and its size."""
    taken: list[WindowChunk] = []
    count = 0
    rest = list(buffer)
    while rest and count < n:
        chunk = rest.pop(0)
        room = n - count
        if len(chunk.starts) > room:
            head = WindowChunk(chunk.rec, chunk.starts[:room], chunk.audio[:room], last=False)
            tail = WindowChunk(chunk.rec, chunk.starts[room:], chunk.audio[room:], last=chunk.last)
            rest.insert(0, tail)
            chunk = head
        taken.append(chunk)
        count += len(chunk.starts)
    if taken:
        audio = torch.cat([c.audio for c in taken])
        rec = torch.cat([torch.full((len(c.starts),), c.rec, dtype=torch.int64) for c in taken])
        start = torch.from_numpy(np.concatenate([c.starts for c in taken]))
    else:
        audio = torch.zeros(0, 0)
        rec = torch.zeros(0, dtype=torch.int64)
        start = torch.zeros(0, dtype=torch.int64)
    batch = {
        "audio": audio,
        "rec": rec,
        "start": start,
        "finished": [c.rec for c in taken if c.last],
    }
    return batch, rest, sum(len(c.starts) for c in rest)


def make_loader(dataset: WindowBatches, num_workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader that passes the dataset's ready-made batches through untouched."""
    kwargs: dict = {}
    if num_workers > 0:
        kwargs.update(prefetch_factor=4, persistent_workers=False)
    return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs)
