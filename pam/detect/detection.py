"""Batched inference over recordings: windows in, committed detection rows out.

The loop keeps the device busy: DataLoader workers decode and resample while the model
scores the previous batch; on CUDA, pinned memory and non-blocking copies overlap the
transfer, and bf16 autocast halves the arithmetic. Recordings are committed to the store
in groups as soon as their last window is scored, so an interrupted run loses at most one
group and a rerun picks up where it stopped.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import torch
from tqdm.auto import tqdm

from pam import __version__
from pam.config import ConfigError, DetectConfig, RetriesConfig
from pam.detect.checkpoint import LoadedModel
from pam.detect.dataset import RecordingTask, WindowBatches, make_loader
from pam.detect.detection_rows import PendingDetections, build_flush, optional_text
from pam.detect.settings import DetectSettings
from pam.io.manifest import check_store_outside
from pam.store.store import Store, new_run_id

log = logging.getLogger("pam.detect.detection")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def default_workers(device: torch.device | str = "cpu") -> int:
    """DataLoader workers when the config leaves it open.

    On CUDA the CPU only decodes, so every spare core decodes. On the CPU the model needs
    the cores itself: decoding is several times cheaper than the forward pass, and on a
    small machine workers only steal cores from it (measured on 2 cores: 0 workers ran
    1.4x faster than 1; docs/benchmarks.md), so workers appear only on big machines.
    """
    cores = os.cpu_count() or 1
    if torch.device(device).type == "cuda":
        return max(0, min(8, cores - 1))
    return min(4, cores // 8)


@dataclass
class DetectionReport:
    run_id: str
    model_id: str
    settings_hash: str
    recordings_total: int = 0
    recordings_done: int = 0
    recordings_skipped: int = 0
    failures: list[dict] = field(default_factory=list)  # {"path", "stage", "status", "reason", "site", ...}
    detections: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    failure_report: str | None = None  # STORE/reports/failures-<run>.md, when anything failed or was skipped

    @property
    def recordings_failed(self) -> int:
        """Recordings given up on in detection (a failed shard counts all it had)."""
        return sum(1 if f["stage"] == "detect" else int(f.get("recordings") or 0) if f["stage"] == "shard" else 0
                   for f in self.failures)

    @property
    def speed(self) -> float:
        """Seconds of audio per wall-clock second."""
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0


class _Forward:
    """Sigmoid scores, in slices of at most ``limit`` windows.

    A CUDA out-of-memory error halves the limit, for this batch and the rest of the run (a
    card that ran out once will run out again), and the batch goes on in smaller slices.
    """

    def __init__(self, net: torch.nn.Module, device: torch.device,
                 logger: logging.Logger | logging.LoggerAdapter | None = None):
        self.net = net
        self.device = device
        self.limit: int | None = None
        self.log = logger or log

    def _once(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return torch.sigmoid(self.net(x).float())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        out: list[torch.Tensor] = []
        i = 0
        while i < n:
            size = min(self.limit or n, n - i)
            try:
                out.append(self._once(x[i:i + size]))
                i += size
            except torch.cuda.OutOfMemoryError:
                if size <= 1:
                    raise
                torch.cuda.empty_cache()
                self.limit = size // 2
                self.log.warning("CUDA out of memory on a batch of %d windows; going on with batches of %d",
                                 size, self.limit)
        return out[0] if len(out) == 1 else torch.cat(out)


SEQ_SPAN = 100_000  # commit numbers per shard: shard k commits as k * SEQ_SPAN, k * SEQ_SPAN + 1, ...


@dataclass
class DetectPlan:
    """What a run has to do: the work key and the usable recordings not yet done under it."""

    run_id: str
    model_id: str
    settings: DetectSettings
    key: str
    total: int
    skipped: int
    todo: pd.DataFrame


def usable_statuses(conf: DetectConfig) -> tuple[str, ...]:
    return ("ok", "truncated") if conf.process_truncated else ("ok",)


def plan_detection(store: Store, recordings: pd.DataFrame, model: LoadedModel, conf: DetectConfig, *,
                   force: bool = False, run_id: str | None = None) -> DetectPlan:
    """The recordings of ``recordings`` (manifest rows) that this model and settings still need.

    One set lookup against the ``done`` table, so planning 10,000 done files takes
    milliseconds and opens no audio.
    """
    settings = DetectSettings.from_config(conf, model)
    key = settings.key()
    rows = recordings[recordings["status"].isin(usable_statuses(conf))].drop_duplicates("recording_id")
    done = set() if force else store.done_keys(model.model_id, key)
    todo = rows[~rows["recording_id"].isin(done)].reset_index(drop=True)
    return DetectPlan(run_id or new_run_id(), model.model_id, settings, key, len(rows), len(rows) - len(todo), todo)


def run_row(plan: DetectPlan, conf: DetectConfig, device: str, dump: str | None,
            started: datetime | None = None) -> dict:
    """The ``runs`` row of a run that has started."""
    return {
        "run_id": plan.run_id, "flow": "detect", "status": "running",
        "started_at": started or datetime.now(timezone.utc),
        "model_id": plan.model_id, "settings_hash": plan.key, "dump": dump, "device": device,
        "config_json": json.dumps({"detect": conf.model_dump(), "settings": plan.settings.__dict__}),
        "pam_version": __version__, "host": socket.gethostname(),
        "recordings_total": plan.total, "recordings_skipped": plan.skipped,
    }


def finish_run(store: Store, row: dict, report: DetectionReport, dumps: list[str] | None = None) -> None:
    """Write the run's final row and, when anything failed or was skipped, its failure report."""
    from pam.store.failures import write_failure_report

    failed = any(f.get("stage") == "shard" for f in report.failures)
    path = write_failure_report(store, report.run_id, report.failures, dumps=dumps)
    report.failure_report = str(path) if path else None
    row.update(
        status="failed" if failed else "completed", finished_at=datetime.now(timezone.utc),
        recordings_total=report.recordings_total, recordings_done=report.recordings_done,
        recordings_skipped=report.recordings_skipped, recordings_failed=report.recordings_failed,
        detections=report.detections, audio_s=report.audio_s, wall_s=report.wall_s,
        failures_json=json.dumps(report.failures),
    )
    store.write_run(row)


def run_detection(
    store: Store,
    recordings: pd.DataFrame,
    model: LoadedModel,
    conf: DetectConfig | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    dump: str | None = None,
    scan_failures: list[dict] | None = None,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    run_id: str | None = None,
    retries: RetriesConfig | None = None,
    wait_s: float = 0.0,
) -> DetectionReport:
    """Score every usable recording in ``recordings`` (manifest rows) not already done.

    Holds the store's run lock (waiting ``wait_s`` for another run), first cleans up what a
    crashed run left, then writes a ``running`` row, commits in groups, and writes the final
    row and failure report.
    """
    logger = logger or log
    conf = conf or DetectConfig()
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    device = resolve_device(conf.device)
    for d in recordings["dump"].dropna().unique() if "dump" in recordings else []:
        check_store_outside(store, d)  # before the lock, which would create the store
    with store.run_lock(wait_s, what=f"detect {dump or ''}".strip()):
        store.ensure()
        store.recover(conf.lock_timeout_s)
        plan = plan_detection(store, recordings, model, conf, force=force, run_id=run_id)
        row = run_row(plan, conf, str(device), dump, started)
        store.write_run(row)
        logger.info(
            "run %s: %d recordings, %d already done with model %s settings %s, %d to do on %s",
            plan.run_id, plan.total, plan.skipped, model.model_id, plan.key, len(plan.todo), device,
        )
        report = detect_recordings(store, plan.todo, model, plan.settings, conf, run_id=plan.run_id, force=force,
                                   retries=retries, device=device, progress=progress, logger=logger)
        report.recordings_total = plan.total
        report.recordings_skipped = plan.skipped
        report.failures = list(scan_failures or []) + report.failures
        report.wall_s = time.perf_counter() - t0
        finish_run(store, row, report, dumps=dump.split(";") if dump else None)
    logger.info(
        "run %s: %d recordings scored (%.2f h audio, %.0fx real time), %d detections, %d failed",
        plan.run_id, report.recordings_done, report.audio_s / 3600, report.speed, report.detections,
        report.recordings_failed,
    )
    return report


def detect_recordings(
    store: Store,
    todo: pd.DataFrame,
    model: LoadedModel,
    settings: DetectSettings,
    conf: DetectConfig,
    *,
    run_id: str,
    force: bool = False,
    retries: RetriesConfig | None = None,
    seq_start: int = 0,
    seq_end: int = SEQ_SPAN,
    device: torch.device | None = None,
    progress: bool = True,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> DetectionReport:
    """Score ``todo`` (manifest rows) and commit them under ``run_id``; writes no run row.

    Commits are numbered from the first free number in [seq_start, seq_end), so shards of
    one run, and a retried shard, never write the same part or done file. A recording that
    fails with a transient error (I/O) is tried again ``retries.count`` times, ``retries.delay_s``
    apart, after the others; then it is reported failed with its reason.
    """
    run = _DetectionRun(store, todo, model, settings, conf, run_id=run_id, force=force,
                        retries=retries or RetriesConfig(), seq_range=(seq_start, seq_end),
                        device=device or resolve_device(conf.device), progress=progress, logger=logger or log)
    queue = run.recordings_to_read()
    with torch.inference_mode():
        while queue:
            again = run.detect_pass(queue)
            run.flush()
            if again and run.retries.delay_s:
                time.sleep(run.retries.delay_s)
            queue = again
    run.bar.close()
    return run.report


class _AudioBar:
    """Progress in hours of audio: a recording advances with its scored windows, jumps to its
    length when it is finished, and is taken off again when it fails.

    Counted in whole milliseconds per recording (so the bar never passes its total through
    float rounding) and shown in hours through unit_scale.
    """

    def __init__(self, durations: pd.Series, progress: bool):
        self.file_ms = {int(i): int(round(float(d) * 1000)) if d == d else 0 for i, d in durations.items()}
        self.shown: dict[int, int] = {}
        self.bar = tqdm(total=sum(self.file_ms.values()), unit="h", unit_scale=1 / 3_600_000, desc="audio",
                        disable=not progress,
                        bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} h audio [{elapsed}<{remaining}, {rate_fmt}]")

    def _show(self, i: int, ms: int) -> None:
        self.bar.update(ms - self.shown.get(i, 0))
        self.shown[i] = ms

    def scored(self, i: int, windows: int, hop_s: float) -> None:
        self._show(i, min(self.file_ms[i], int(windows * hop_s * 1000)))

    def finished(self, i: int) -> None:
        self._show(i, self.file_ms[i])

    def failed(self, i: int) -> None:
        self.bar.update(-self.shown.pop(i, 0))

    def close(self) -> None:
        self.bar.close()


class _DetectionRun:
    """One ``detect_recordings`` call: the model on its device, each recording's attempts, the
    detections of recordings still being scored (``pending``), the finished ones not yet
    committed (``ready``), the next commit number, the progress bar and the report."""

    def __init__(self, store: Store, todo: pd.DataFrame, model: LoadedModel, settings: DetectSettings,
                 conf: DetectConfig, *, run_id: str, force: bool, retries: RetriesConfig, seq_range: tuple[int, int],
                 device: torch.device, progress: bool, logger: logging.Logger | logging.LoggerAdapter):
        self.store, self.model, self.settings, self.conf = store, model, settings, conf
        self.run_id, self.force, self.retries, self.device, self.logger = run_id, force, retries, device, logger
        self.key = settings.key()
        self.report = DetectionReport(run_id, model.model_id, self.key)
        self.todo = todo.reset_index(drop=True)
        self.forward = _Forward(model.net.to(device).eval(), device, logger)
        self.thresholds = torch.tensor([settings.thresholds[c] for c in model.card.classes], device=device)
        workers = conf.num_workers if conf.num_workers is not None else default_workers(device)
        if workers and multiprocessing.current_process().daemon:
            workers = 0  # a daemonic process (a Dask worker) may not start DataLoader workers
        self.workers = workers
        self.pending: dict[int, PendingDetections] = {}
        self.ready: list[int] = []
        self.seq_start, self.seq_end = seq_range
        self.seq = store.next_seq(run_id, self.seq_start, self.seq_end)
        self.last_flush = time.monotonic()
        self.bar = _AudioBar(self.todo["duration_s"], progress)
        self.attempts = [0] * len(self.todo)

    def recordings_to_read(self) -> list[int]:
        """The recordings that can be read; those the manifest gives no rate or length are reported failed."""
        queue = []
        for i, (rate, frames) in enumerate(zip(self.todo["sample_rate"], self.todo["frames"])):
            if pd.isna(rate) or pd.isna(frames) or int(rate) <= 0 or int(frames) <= 0:
                self.report.failures.append({
                    "path": str(self.todo.at[i, "path"]), "stage": "detect", "status": "failed",
                    "reason": "the manifest has no sample rate or length for it; rescan the dump",
                    "site": optional_text(self.todo.at[i, "site"]), "attempts": 0})
            else:
                queue.append(i)
        return queue

    def detect_pass(self, queue: list[int]) -> list[int]:
        """Read and score the recordings of ``queue`` once, committing as they finish; the ones to try again."""
        again: list[int] = []
        for i in queue:
            self.attempts[i] += 1
        tasks = [RecordingTask(i, str(self.todo.at[i, "path"]), int(self.todo.at[i, "sample_rate"]),
                               int(self.todo.at[i, "frames"])) for i in queue]
        settings = self.settings
        dataset = WindowBatches(tasks, self.model.card.sample_rate, settings.window_s, settings.hop_s,
                                self.conf.batch_size, settings.channel)
        loader = make_loader(dataset, num_workers=min(self.workers, len(tasks)), pin_memory=self.device.type == "cuda")
        for batch in loader:
            if batch["audio"].shape[0]:
                self.score_batch(batch)
            for i in batch["finished"]:
                self.pending.setdefault(int(i), PendingDetections())
                self.ready.append(int(i))
                self.bar.finished(int(i))
            for i, reason, transient in batch["errors"]:
                self.bar.failed(int(i))
                if self.failed(int(i), reason, transient):
                    again.append(int(i))
            if len(self.ready) >= self.conf.flush_every or (self.ready and time.monotonic() - self.last_flush > 60):
                self.flush()
        return again

    def score_batch(self, batch: dict) -> None:
        """Score a batch of windows and add the hits to their recordings' pending detections."""
        scores = self.forward(batch["audio"].to(self.device, non_blocking=True))
        hit_rows, hit_cls = torch.nonzero(scores >= self.thresholds, as_tuple=True)
        hit_scores = scores[hit_rows, hit_cls].cpu().numpy()
        hit_rows, hit_cls = hit_rows.cpu().numpy(), hit_cls.cpu().numpy()
        rec = batch["rec"].numpy()
        start = batch["start"].numpy()
        for i in np.unique(rec):
            p = self.pending.setdefault(int(i), PendingDetections())
            p.windows += int((rec == i).sum())
            sel = rec[hit_rows] == i
            if sel.any():
                p.starts.append(start[hit_rows[sel]])
                p.classes.append(hit_cls[sel])
                p.scores.append(hit_scores[sel])
            self.bar.scored(int(i), p.windows, self.settings.hop_s)

    def failed(self, i: int, reason: str, transient: bool) -> bool:
        """Drop a recording that failed to read; True when it is to be tried again, else it is reported."""
        self.pending.pop(i, None)
        path = str(self.todo.at[i, "path"])
        attempts = self.attempts[i]
        if transient and attempts <= self.retries.count:
            self.logger.warning("%s: %s; will retry (attempt %d of %d)", path, reason, attempts, self.retries.count + 1)
            return True
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        self.report.failures.append({"path": path, "stage": "detect", "status": "failed", "reason": reason + tries,
                                     "site": optional_text(self.todo.at[i, "site"]), "attempts": attempts})
        self.logger.warning("%s: %s%s", path, reason, tries)
        return False

    def flush(self) -> None:
        """Commit the finished recordings (detections and done rows) and count them into the report."""
        if not self.ready:
            return
        if self.seq >= self.seq_end:
            raise RuntimeError(f"run {self.run_id} used up its commit numbers {self.seq_start}-{self.seq_end - 1}; "
                               "raise detect.flush_every")
        rows = build_flush(self.todo, self.ready, self.pending, self.model.card.classes, self.settings,
                            self.model.model_id, self.key, self.run_id)
        result = self.store.commit(self.run_id, self.seq, rows, replace=self.force,
                                   lock_timeout_s=self.conf.lock_timeout_s)
        if result.superseded:
            self.logger.warning("%d earlier result(s) of this model replaced: the same recording under other "
                                "detection settings, or a file rewritten since it was analysed", result.superseded)
        committed = result.done
        self.report.recordings_done += committed.num_rows
        self.report.detections += int(pc.sum(committed.column("detections")).as_py() or 0)
        self.report.audio_s += float(pc.sum(committed.column("audio_s")).as_py() or 0.0)
        for i in self.ready:
            self.pending.pop(i, None)
        self.ready = []
        self.seq += 1
        self.last_flush = time.monotonic()
