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
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pam import __version__
from pam.config import ConfigError, DetectConfig, RetriesConfig, SiteConfig
from pam.detect.contract import DetectionModel
from pam.detect.progress import AudioBar, Progress
from pam.detect.dataset import RecordingTask, WindowBatches, make_loader
from pam.detect.detection_rows import build_flush, optional_text
from pam.detect.span_batches import SpanBatches
from pam.detect.scoring import ModelPlan, ScoringLane, window_groups
from pam.detect.settings import settings_of
from pam.detect.species_filter import class_masks
from pam.detect.species_filter import describe as describe_filter
from pam.io.manifest import check_store_outside
from pam.store.store import Flush, Store, new_run_id

log = logging.getLogger("pam.detect.detection")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA device is available (use --device cpu or auto)")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigError(f"device {name!r} asked for, but this machine has {count} CUDA device(s) "
                          f"(cuda:0 to cuda:{count - 1})")
    return device


def default_workers(device: torch.device | str = "cpu", cores: int | None = None) -> int:
    """DataLoader workers when the config leaves it open.

    On CUDA the CPU only decodes, so every spare core decodes. On the CPU the model needs
    the cores itself: decoding is several times cheaper than the forward pass, and on a
    small machine workers only steal cores from it (measured on 2 cores: 0 workers ran
    1.4x faster than 1; docs/benchmarks.md), so workers appear only on big machines.
    ``cores``: the cores this process may use (a device worker's share); default: all.
    """
    cores = cores or os.cpu_count() or 1
    if torch.device(device).type == "cuda":
        return max(0, min(8, cores - 1))
    return min(4, cores // 8)


def data_path(conf: DetectConfig, device: torch.device) -> str:
    """``windows`` (DataLoader workers cut float windows) or ``spans`` (reader threads send raw
    samples; the device resamples and cuts); ``auto`` picks spans on CUDA, windows on the CPU
    (the faster there, docs/benchmarks.md)."""
    if conf.data_path != "auto":
        return conf.data_path
    return "spans" if device.type == "cuda" else "windows"


def default_readers(device: torch.device | str = "cpu", cores: int | None = None) -> int:
    """Reader threads of the spans path when ``detect.num_workers`` leaves it open: on CUDA one
    per core (at most 8: soundfile decodes without the GIL); on the CPU one, reading ahead while
    the model computes. ``cores`` as for ``default_workers``."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(8, cores)) if torch.device(device).type == "cuda" else 1


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


SEQ_SPAN = 100_000  # commit numbers per shard: shard k commits as k * SEQ_SPAN, k * SEQ_SPAN + 1, ...


@dataclass
class DetectPlan:
    """What a run has to do: each model's work key and the usable recordings not yet done
    under it; ``todo`` holds the recordings at least one model still needs."""

    run_id: str
    models: list[ModelPlan]
    total: int
    skipped: int
    todo: pd.DataFrame

    @property
    def model_id(self) -> str:
        """The runs row's model_id: the models' ids joined with ';' (one id for a one-model run)."""
        return ";".join(m.model_id for m in self.models)

    @property
    def key(self) -> str:
        """The runs row's settings_hash: each model's, in the order of ``model_id``."""
        return ";".join(m.key for m in self.models)


def usable_statuses(conf: DetectConfig) -> tuple[str, ...]:
    return ("ok", "truncated") if conf.process_truncated else ("ok",)


def as_models(model: DetectionModel | list[DetectionModel]) -> list[DetectionModel]:
    return list(model) if isinstance(model, (list, tuple)) else [model]


def plan_detection(store: Store, recordings: pd.DataFrame, model: DetectionModel | list[DetectionModel],
                   conf: DetectConfig, *, force: bool = False, run_id: str | None = None,
                   sites: dict[str, SiteConfig] | None = None) -> DetectPlan:
    """The recordings of ``recordings`` (manifest rows) that each model, under its settings, still needs.
    ``sites``: the config's sites (positions and species lists of the species filter).

    One set lookup per model against the ``done`` table, so planning 10,000 done files takes
    milliseconds and opens no audio.
    """
    models = as_models(model)
    rows = recordings[recordings["status"].isin(usable_statuses(conf))].drop_duplicates("recording_id")
    ids = set(rows["recording_id"])
    plans = []
    for m, settings in zip(models, settings_of(conf, models, sites)):
        key = settings.key()
        done = set() if force else store.done_keys(m.model_id, key)
        plans.append(ModelPlan(m, settings, key, ids - done))
    needed = set().union(*(p.todo_ids for p in plans))
    todo = rows[rows["recording_id"].isin(needed)].reset_index(drop=True)
    return DetectPlan(run_id or new_run_id(), plans, len(rows), len(rows) - len(todo), todo)


def run_row(plan: DetectPlan, conf: DetectConfig, device: str, dump: str | None,
            started: datetime | None = None) -> dict:
    """The ``runs`` row of a run that has started. ``config_json`` names each model; a
    one-model run keeps its settings under ``settings``, several models each under theirs."""
    one = len(plan.models) == 1
    models = [{"model_id": m.model_id, "name": m.model.name, "source": m.model.source, "licence": m.model.licence,
               **({"species_filter": describe_filter(m.settings.species_filter)} if m.model.scientific_names else {}),
               **({} if one else {"settings": m.settings.__dict__})} for m in plan.models]
    config = {"detect": conf.model_dump(), "models": models}
    if one:
        config["settings"] = plan.models[0].settings.__dict__
    return {
        "run_id": plan.run_id, "flow": "detect", "status": "running",
        "started_at": started or datetime.now(timezone.utc),
        "model_id": plan.model_id, "settings_hash": plan.key, "dump": dump, "device": device,
        "config_json": json.dumps(config),
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
    model: DetectionModel | list[DetectionModel],
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
    sites: dict[str, SiteConfig] | None = None,
) -> DetectionReport:
    """Score every usable recording in ``recordings`` (manifest rows) not already done by
    ``model`` (or by each of several models: each recording is decoded once per window group).

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
        plan = plan_detection(store, recordings, model, conf, force=force, run_id=run_id, sites=sites)
        row = run_row(plan, conf, str(device), dump, started)
        store.write_run(row)
        logger.info(
            "run %s: %d recordings, %d already done with model %s settings %s, %d to do on %s",
            plan.run_id, plan.total, plan.skipped, plan.model_id, plan.key, len(plan.todo), device,
        )
        report = detect_recordings(store, plan.todo, plan.models, conf, run_id=plan.run_id, force=force,
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
    models: list[ModelPlan],
    conf: DetectConfig,
    *,
    run_id: str,
    force: bool = False,
    retries: RetriesConfig | None = None,
    seq_start: int = 0,
    seq_end: int = SEQ_SPAN,
    device: torch.device | None = None,
    progress: Progress = True,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
) -> DetectionReport:
    """Score ``todo`` (manifest rows) with each model that needs them and commit them under
    ``run_id``; writes no run row. The models that read the same windows (``window_groups``)
    score the same decoded batches; each group is one pass over its recordings.

    Commits are numbered from the first free number in [seq_start, seq_end), so shards of
    one run, and a retried shard, never write the same part or done file. A recording that
    fails with a transient error (I/O) is tried again ``retries.count`` times, ``retries.delay_s``
    apart, after the others; then it is reported failed with its reason.
    """
    run = _DetectionRun(store, todo, models, conf, run_id=run_id, force=force,
                        retries=retries or RetriesConfig(), seq_range=(seq_start, seq_end),
                        device=device or resolve_device(conf.device), progress=progress, logger=logger or log)
    readable = run.recordings_to_read()
    with torch.inference_mode():
        for group in window_groups(models):
            queue = run.start_group(group, readable)
            while queue:
                again = run.detect_pass(queue)
                run.flush()
                if again and run.retries.delay_s:
                    time.sleep(run.retries.delay_s)
                queue = again
    run.bar.close()
    return run.report


class _DetectionRun:
    """One ``detect_recordings`` call: the models of the window group being read (``lanes``),
    each recording's attempts, the finished recordings not yet committed (``ready``), the
    recordings given up on, the next commit number, the progress bar and the report."""

    def __init__(self, store: Store, todo: pd.DataFrame, models: list[ModelPlan], conf: DetectConfig, *,
                 run_id: str, force: bool, retries: RetriesConfig, seq_range: tuple[int, int],
                 device: torch.device, progress: Progress, logger: logging.Logger | logging.LoggerAdapter):
        self.store, self.models, self.conf = store, models, conf
        self.run_id, self.force, self.retries, self.device, self.logger = run_id, force, retries, device, logger
        self.report = DetectionReport(run_id, ";".join(m.model_id for m in models), ";".join(m.key for m in models))
        self.todo = todo.reset_index(drop=True)
        self.lanes: list[ScoringLane] = []
        workers = conf.num_workers if conf.num_workers is not None else default_workers(device)
        if workers and multiprocessing.current_process().daemon:
            workers = 0  # a daemonic process (a Dask worker) may not start DataLoader workers
        self.workers = workers
        self.ready: list[int] = []
        self.gave_up: set[int] = set()
        self.committed_audio: dict[str, float] = {}  # recording id -> seconds, over all models
        self.seq_start, self.seq_end = seq_range
        self.seq = store.next_seq(run_id, self.seq_start, self.seq_end)
        self.last_flush = time.monotonic()
        self.bar = AudioBar(self.todo["duration_s"], progress)
        self.attempts = [0] * len(self.todo)
        self.windows = [0] * len(self.todo)

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

    def start_group(self, group: list[ModelPlan], readable: list[int]) -> list[int]:
        """Make ``group`` the models being scored; the readable recordings any of them needs."""
        ids = self.todo["recording_id"].to_numpy()
        self.lanes = [ScoringLane(p, np.fromiter((r in p.todo_ids for r in ids), dtype=bool, count=len(ids)),
                                  self.device, self.logger,
                                  masks=class_masks(p.settings.species_filter, p.model, self.todo["site"],
                                              self.todo["start_time"]))
                      for p in group]
        self.attempts = [0] * len(self.todo)
        self.windows = [0] * len(self.todo)
        return [i for i in readable if i not in self.gave_up and any(lane.needs[i] for lane in self.lanes)]

    def detect_pass(self, queue: list[int]) -> list[int]:
        """Read and score the recordings of ``queue`` once, committing as they finish; the ones to try again."""
        again: list[int] = []
        for i in queue:
            self.attempts[i] += 1
        tasks = [RecordingTask(i, str(self.todo.at[i, "path"]), int(self.todo.at[i, "sample_rate"]),
                               int(self.todo.at[i, "frames"])) for i in queue]
        settings = self.lanes[0].plan.settings  # the group's window, hop and channel
        rate = self.lanes[0].model.sample_rate
        if data_path(self.conf, self.device) == "spans":
            readers = self.conf.num_workers if self.conf.num_workers is not None else default_readers(self.device)
            loader = SpanBatches(tasks, rate, settings.window_s, settings.hop_s, self.conf.batch_size,
                                 settings.channel, device=self.device, readers=min(readers, len(tasks)))
        else:
            dataset = WindowBatches(tasks, rate, settings.window_s, settings.hop_s, self.conf.batch_size,
                                    settings.channel)
            loader = make_loader(dataset, num_workers=min(self.workers, len(tasks)),
                                 pin_memory=self.device.type == "cuda")
        for batch in loader:
            if batch["audio"].shape[0]:
                self.score_batch(batch)
            for i in batch["finished"]:
                for lane in self.lanes:
                    lane.finished(int(i))
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
        """Score a batch of windows with each model of the group and add the hits to their recordings."""
        audio = batch["audio"].to(self.device, non_blocking=True)
        rec = batch["rec"].numpy()
        start = batch["start"].numpy()
        for lane in self.lanes:
            lane.score(audio, rec, start)
        hop_s = self.lanes[0].plan.settings.hop_s
        for i, n in zip(*np.unique(rec, return_counts=True)):
            self.windows[int(i)] += int(n)
            self.bar.scored(int(i), self.windows[int(i)], hop_s)

    def failed(self, i: int, reason: str, transient: bool) -> bool:
        """Drop a recording that failed to read; True when it is to be tried again, else it is reported."""
        for lane in self.lanes:
            lane.pending.pop(i, None)
        self.windows[i] = 0
        path = str(self.todo.at[i, "path"])
        attempts = self.attempts[i]
        if transient and attempts <= self.retries.count:
            self.logger.warning("%s: %s; will retry (attempt %d of %d)", path, reason, attempts, self.retries.count + 1)
            return True
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        self.report.failures.append({"path": path, "stage": "detect", "status": "failed", "reason": reason + tries,
                                     "site": optional_text(self.todo.at[i, "site"]), "attempts": attempts})
        self.logger.warning("%s: %s%s", path, reason, tries)
        self.gave_up.add(i)
        return False

    def flush(self) -> None:
        """Commit the finished recordings (every model's detections and done rows, in one commit)
        and count them into the report."""
        if not self.ready:
            return
        if self.seq >= self.seq_end:
            raise RuntimeError(f"run {self.run_id} used up its commit numbers {self.seq_start}-{self.seq_end - 1}; "
                               "raise detect.flush_every")
        flushes = []
        for lane in self.lanes:
            mine = [i for i in self.ready if lane.needs[i]]
            if mine:
                plan = lane.plan
                flushes.append(build_flush(self.todo, mine, lane.pending, lane.model.classes, plan.settings,
                                           plan.model_id, plan.key, self.run_id))
        if not flushes:
            self.ready = []
            return
        vectors = [f.embeddings for f in flushes if f.embeddings is not None]
        rows = Flush(pa.concat_tables([f.detections for f in flushes]), pa.concat_tables([f.done for f in flushes]),
                     pa.concat_tables(vectors) if vectors else None)
        result = self.store.commit(self.run_id, self.seq, rows, replace=self.force,
                                   lock_timeout_s=self.conf.lock_timeout_s)
        if result.superseded:
            self.logger.warning("%d earlier result(s) of this model replaced: the same recording under other "
                                "detection settings, or a file rewritten since it was analysed", result.superseded)
        committed = result.done
        self.committed_audio.update(zip(committed.column("recording_id").to_pylist(),
                                        committed.column("audio_s").to_pylist()))
        self.report.recordings_done = len(self.committed_audio)
        self.report.audio_s = float(sum(self.committed_audio.values()))
        self.report.detections += int(pc.sum(committed.column("detections")).as_py() or 0)
        for lane in self.lanes:
            for i in self.ready:
                lane.pending.pop(i, None)
        self.ready = []
        self.seq += 1
        self.last_flush = time.monotonic()
