"""Raw-sample readers for the ``spans`` data path: each recording is read as contiguous spans
of its own integer samples (int16, or int32 for 24- and 32-bit files), every sample once.

The spans are those of ``pam.detect.dataset.span_plan`` (the windows path resamples the same
spans), but a span that overlaps the previous one reads only its new samples: the device side
carries the overlap over (``pam.detect.span_batches``). Nothing is converted to float here.
Samples land in reused staging buffers, pinned on CUDA so the copy to the device can run
asynchronously; a buffer goes back to the pool once the device has copied it.

Readers are threads: soundfile releases the GIL while it decodes, so threads read in parallel
without copying samples between processes. With ``readers=0`` the consumer reads in its own
thread (one recording after another).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import soundfile as sf
import torch

from pam.detect.dataset import RecordingTask, Span, read_failure, span_plan
from pam.detect.windows import window_grid
from pam.io.audio import AudioError, check_resample

# Subtypes whose samples are read as int16 (at most 16 significant bits) or int32 (24 or 32);
# anything else (float files, compressed oddities) is read as float32.
INT16_SUBTYPES = {"PCM_S8", "PCM_U8", "PCM_16", "ULAW", "ALAW"}
INT32_SUBTYPES = {"PCM_24", "PCM_32"}
SCALE = {torch.int16: 1.0 / 32768, torch.int32: 1.0 / 2**31, torch.float32: 1.0}


def raw_dtype(subtype: str) -> torch.dtype:
    """The integer width a file is read at; libsndfile's float reading divides it by ``SCALE``."""
    if subtype in INT16_SUBTYPES:
        return torch.int16
    if subtype in INT32_SUBTYPES:
        return torch.int32
    return torch.float32


class StagingBuffer:
    """A reusable block of (pinned) host memory; ``event`` marks the device's copy out of it."""

    def __init__(self, pinned: bool):
        self.pinned = pinned
        self.memory = torch.empty(0, dtype=torch.uint8)
        self.event: object | None = None  # a torch.cuda.Event once a copy was queued

    def rows(self, frames: int, channels: int, dtype: torch.dtype) -> torch.Tensor:
        """A [frames, channels] view of ``dtype``, growing the block when it is too small."""
        if self.event is not None:
            self.event.synchronize()  # the previous copy out of this memory is done
            self.event = None
        nbytes = frames * channels * torch.empty(0, dtype=dtype).element_size()
        if self.memory.numel() < nbytes:
            size = max(nbytes, 2 * self.memory.numel())
            self.memory = torch.empty(size, dtype=torch.uint8, pin_memory=self.pinned)
        return self.memory[:nbytes].view(dtype).view(frames, channels)


class StagingPool:
    """Buffers shared by the readers; ``take`` waits until one is free (or the pool is closed)."""

    def __init__(self, count: int, pinned: bool):
        self.free: queue.Queue[StagingBuffer] = queue.Queue()
        for _ in range(count):
            self.free.put(StagingBuffer(pinned))
        self.closed = threading.Event()

    def take(self) -> StagingBuffer:
        while not self.closed.is_set():
            try:
                return self.free.get(timeout=0.1)
            except queue.Empty:
                continue
        raise _Stopped

    def give(self, buffer: StagingBuffer | None) -> None:
        if buffer is not None:
            self.free.put(buffer)


class _Stopped(Exception):
    """The consumer went away; readers stop."""


@dataclass
class RawSpan:
    """One span of a recording: its windows (``starts``, file samples), the span's input range
    ``span.lo:span.hi``, and the new samples ``data`` [frames, channels] that begin at file sample
    ``read_lo`` (the span's samples before ``read_lo`` are the previous span's tail, or zeros);
    ``keep_from`` is where the next span begins (None for the last span)."""

    rec: int
    rate: int
    span: Span
    starts: np.ndarray
    read_lo: int
    data: torch.Tensor
    keep_from: int | None
    buffer: StagingBuffer | None

    @property
    def last(self) -> bool:
        return self.keep_from is None


@dataclass
class ReadFailure:
    rec: int
    reason: str
    transient: bool


class ReadLog:
    """The file ranges read, per recording (for tests and benchmarks: every sample once)."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int, int]] = []  # (rec, first sample, end sample)

    def add(self, rec: int, lo: int, hi: int) -> None:
        self.ranges.append((rec, lo, hi))  # list.append is atomic under the GIL

    def frames(self) -> int:
        return sum(hi - lo for _, lo, hi in self.ranges)


def read_recording(task: RecordingTask, target_rate: int, window_s: float, hop_s: float, channel: int | None,
                   pool: StagingPool, max_span_s: float = 120.0, log: ReadLog | None = None) -> Iterator[RawSpan]:
    """The spans of one recording, in order, each with only the samples no earlier span read."""
    grid = window_grid(task.frames, task.sample_rate, window_s, hop_s)
    plan = span_plan(grid, target_rate, max_span_s)
    with sf.SoundFile(task.path) as snd:
        if snd.samplerate != task.sample_rate:
            raise AudioError("changed", f"sample rate changed since the scan ({task.sample_rate} -> {snd.samplerate} Hz)")
        if channel is not None and channel >= snd.channels:
            raise AudioError("bad_channel", f"detect.channel is {channel} (counted from 0) but the file has "
                                            f"{snd.channels} channel(s)")
        check_resample(task.sample_rate, target_rate)
        dtype = raw_dtype(snd.subtype)
        end = snd.frames
        done = None  # end of the input range the previous span covered
        for k, span in enumerate(plan):
            new_lo = span.lo if done is None else max(span.lo, done)
            lo, hi = max(0, new_lo), min(end, span.hi)
            keep_from = plan[k + 1].lo if k + 1 < len(plan) else None
            buffer = None
            if hi > lo:
                buffer = pool.take()
                try:
                    rows = buffer.rows(hi - lo, snd.channels, dtype)
                    snd.seek(lo)
                    got = snd.read(out=rows.numpy())  # fewer rows when the file ends early
                except BaseException:
                    pool.give(buffer)
                    raise
                data = rows[: len(got)]
                if log is not None:
                    log.add(task.index, lo, lo + len(got))
            else:
                data = torch.zeros(0, snd.channels, dtype=dtype)
                lo = max(lo, new_lo)
            done = span.hi
            yield RawSpan(task.index, task.sample_rate, span, grid.starts[span.i:span.j], lo, data, keep_from, buffer)


class SpanReader:
    """Raw spans of ``tasks`` from ``readers`` threads (each reads whole recordings in turn);
    a recording's spans arrive in order, followed by a ``ReadFailure`` if it broke."""

    def __init__(self, tasks: list[RecordingTask], target_rate: int, window_s: float, hop_s: float,
                 channel: int | None, *, readers: int, pinned: bool, max_span_s: float = 120.0,
                 log: ReadLog | None = None):
        self.tasks, self.target_rate, self.window_s, self.hop_s = tasks, target_rate, window_s, hop_s
        self.channel, self.readers, self.max_span_s, self.log = channel, readers, max_span_s, log
        # Enough buffers that every reader has one in hand while the device copies two more.
        self.pool = StagingPool(2 * readers + 2 if readers else 1, pinned)

    def _recording(self, task: RecordingTask) -> Iterator[RawSpan | ReadFailure]:
        try:
            yield from read_recording(task, self.target_rate, self.window_s, self.hop_s, self.channel,
                                      self.pool, self.max_span_s, self.log)
        except _Stopped:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop the others
            yield ReadFailure(task.index, *read_failure(exc, task.path))

    def __iter__(self) -> Iterator[RawSpan | ReadFailure]:
        if not self.readers:
            for task in self.tasks:
                yield from self._recording(task)
            return
        todo: queue.SimpleQueue[RecordingTask] = queue.SimpleQueue()
        for task in self.tasks:
            todo.put(task)
        out: queue.Queue = queue.Queue()
        threads = [threading.Thread(target=self._work, args=(todo, out), daemon=True, name=f"pam-reader-{n}")
                   for n in range(min(self.readers, len(self.tasks)))]
        for t in threads:
            t.start()
        running = len(threads)
        try:
            while running:
                item = out.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            self.pool.closed.set()  # readers waiting for a buffer stop
            for t in threads:
                t.join()

    def _work(self, todo: queue.SimpleQueue, out: queue.Queue) -> None:
        try:
            while not self.pool.closed.is_set():
                try:
                    task = todo.get_nowait()
                except queue.Empty:
                    break
                for item in self._recording(task):
                    out.put(item)
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            out.put(exc)
        finally:
            out.put(None)
