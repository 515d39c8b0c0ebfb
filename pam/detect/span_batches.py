"""The ``spans`` data path on the device: raw spans in, batches of windows out.

``SpanReader`` threads read each recording's raw integer samples once; here they are copied to
the device (on a side stream on CUDA, out of pinned staging buffers), converted to float,
mixed to mono (or one channel picked), joined with the tail the previous span left, resampled
to the model's rate and cut into windows as a strided view: the same spans, the same
arithmetic and the same zero padding as the ``windows`` path (``pam.detect.dataset``), only
run where the model runs. The batches have the shape ``WindowBatches`` yields (audio already on
the device), so the detection loop scores them the same way.
"""

from __future__ import annotations

from typing import Iterator

import torch

from pam.detect.dataset import RecordingTask, WindowChunk, cut_span, read_failure, take_batch
from pam.detect.span_reader import SCALE, RawSpan, ReadFailure, ReadLog, SpanReader
from pam.io.audio import resample


class DeviceWindows:
    """Turns a recording's raw spans, in order, into windows on ``device``."""

    def __init__(self, device: torch.device, target_rate: int, window_s: float, channel: int | None):
        self.device, self.target_rate, self.window_s, self.channel = device, target_rate, window_s, channel
        self.tails: dict[int, torch.Tensor] = {}  # rec -> mono input from the next span's start
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _to_device(self, piece: RawSpan) -> torch.Tensor:
        data = piece.data
        if self.copy_stream is None:
            return data.to(self.device)
        with torch.cuda.stream(self.copy_stream):
            moved = data.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        if piece.buffer is not None:
            piece.buffer.event = event  # the reader waits on it before reusing the memory
        torch.cuda.current_stream(self.device).wait_stream(self.copy_stream)
        moved.record_stream(torch.cuda.current_stream(self.device))
        return moved

    def mono_into(self, piece: RawSpan, out: torch.Tensor) -> None:
        """Write the span's new samples into ``out`` as float mono, scaled as libsndfile scales
        them when it reads floats (a power of two, so exact). One pass over the samples for a
        mono file or a picked channel: on the CPU every extra temporary costs as much as the
        arithmetic."""
        raw = self._to_device(piece)
        scale = SCALE[raw.dtype]
        if self.channel is not None or raw.shape[1] == 1:
            one = raw[:, self.channel or 0]
            if raw.dtype == torch.float32:
                out.copy_(one)
            else:
                torch.mul(one, scale, out=out)
        else:
            torch.mean(raw * scale if raw.dtype != torch.float32 else raw, dim=1, out=out)
        if raw.dtype == torch.float32:  # a float file with corrupt samples: silence them, never NaN scores
            torch.nan_to_num_(out, nan=0.0, posinf=0.0, neginf=0.0)

    def wave(self, piece: RawSpan) -> torch.Tensor:
        """The span's whole mono input on the device: the previous span's tail, the new samples,
        zeros before the file's start and after its end; keeps the next span's tail."""
        span = piece.span
        wave = torch.empty(span.hi - span.lo, dtype=torch.float32, device=self.device)
        tail = self.tails.pop(piece.rec, None)
        kept = 0 if tail is None else tail.shape[0]
        if tail is not None:
            wave[:kept] = tail
        at = piece.read_lo - span.lo  # never before the tail's end: no sample is read twice
        end = at + piece.data.shape[0]
        wave[kept:at].zero_()  # before the file's start
        self.mono_into(piece, wave[at:end])
        wave[end:].zero_()  # past the file's end (the last window's padding)
        if piece.keep_from is not None and piece.keep_from < span.hi:
            self.tails[piece.rec] = wave[piece.keep_from - span.lo:].clone()
        return wave

    def windows(self, staged: list[tuple[RawSpan, torch.Tensor]]) -> list[torch.Tensor]:
        """Windows [n, samples at the model rate] of each staged (span, wave). Spans of one
        length and rate (a night of equal files) are resampled as one batch: one call instead
        of one per file, which on the CPU and on CUDA costs more in overhead than in arithmetic."""
        out: list[torch.Tensor | None] = [None] * len(staged)
        groups: dict[tuple[int, int], list[int]] = {}
        for k, (piece, wave) in enumerate(staged):
            groups.setdefault((piece.rate, wave.shape[0]), []).append(k)
        for (rate, _), members in groups.items():
            waves = [staged[k][1] for k in members]
            if rate != self.target_rate:
                waves = list(resample(torch.stack(waves) if len(waves) > 1 else waves[0][None], rate,
                                      self.target_rate))
            for k, wave in zip(members, waves):
                piece = staged[k][0]
                out[k] = cut_span(wave, piece.starts, piece.span.lo, rate, self.target_rate, self.window_s)
        return out

    def drop(self, rec: int) -> None:
        self.tails.pop(rec, None)


class SpanBatches:
    """Iterable of batch dicts like ``WindowBatches``: audio [B, samples] on the device, rec [B],
    start [B], finished, errors; a broken recording fails alone and the others go on."""

    def __init__(self, tasks: list[RecordingTask], target_rate: int, window_s: float, hop_s: float,
                 batch_size: int, channel: int | None = None, *, device: torch.device | str = "cpu",
                 readers: int = 1, max_span_s: float = 120.0, log: ReadLog | None = None):
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.tasks = {t.index: t for t in tasks}
        self.reader = SpanReader(tasks, target_rate, window_s, hop_s, channel, readers=readers,
                                 pinned=self.device.type == "cuda", max_span_s=max_span_s, log=log)
        self.transform = DeviceWindows(self.device, target_rate, window_s, channel)

    def __iter__(self) -> Iterator[dict]:
        buffer: list[WindowChunk] = []
        buffered = 0
        staged: list[tuple[RawSpan, torch.Tensor]] = []  # waves waiting to be resampled together
        staged_windows = 0
        errors: list[tuple[int, str, bool]] = []
        failed: set[int] = set()
        for item in self.reader:
            if item.rec in failed:  # spans a reader had read before the device side failed it
                if isinstance(item, RawSpan):
                    self.reader.pool.give(item.buffer)
                continue
            failure = None
            if isinstance(item, ReadFailure):
                failure = (item.reason, item.transient)
            else:
                try:
                    staged.append((item, self.transform.wave(item)))
                    staged_windows += len(item.starts)
                except Exception as exc:  # noqa: BLE001 - one bad file must never stop the others
                    failure = read_failure(exc, self.tasks[item.rec].path)
                finally:
                    self.reader.pool.give(item.buffer)
            if failure is not None:
                failed.add(item.rec)
                self.transform.drop(item.rec)
                staged = [(p, w) for p, w in staged if p.rec != item.rec]
                staged_windows = sum(len(p.starts) for p, _ in staged)
                buffer = [c for c in buffer if c.rec != item.rec]
                buffered = sum(len(c.starts) for c in buffer)
                errors.append((item.rec, *failure))
                continue
            if staged_windows < self.batch_size:
                continue
            buffered += self._cut(staged, buffer)
            staged, staged_windows = [], 0
            while buffered >= self.batch_size:
                batch, buffer, buffered = take_batch(buffer, self.batch_size)
                batch["errors"], errors = errors, []
                yield batch
        buffered += self._cut(staged, buffer)
        while buffer or errors:
            batch, buffer, buffered = take_batch(buffer, self.batch_size)
            batch["errors"], errors = errors, []
            yield batch

    def _cut(self, staged: list[tuple[RawSpan, torch.Tensor]], buffer: list[WindowChunk]) -> int:
        """Resample and cut the staged waves into ``buffer``; the number of windows added."""
        if not staged:
            return 0
        for (piece, _), audio in zip(staged, self.transform.windows(staged)):
            buffer.append(WindowChunk(piece.rec, piece.starts, audio, piece.last))
        return sum(len(p.starts) for p, _ in staged)
