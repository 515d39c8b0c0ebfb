"""Scale-out: one run's recordings split into shards that are scored concurrently, anywhere.

A run is planned once (its models, their settings, what is left to do) and gets one ``runs`` row. Its
to-do list is split into shards of about equal audio duration, and each shard is scored by
``run_shard``: in a thread, in a Dask worker on another machine, or again after a crash. A
shard loads the model itself (nothing but ids and paths travels), skips what is already
committed, and commits under the run's id with its own block of commit numbers
(``shard * SEQ_SPAN`` onwards, after any its earlier attempt used), so shards never write
the same part or done file and never wait on each other except for the short commit lock.
``end_run`` counts what was actually committed (from the ``done`` table, so a retried shard
is counted once) and writes the final row and the failure report.

``detect_sharded`` runs the shards in threads without Prefect; ``flows/nightly.py`` runs
the same three steps as Prefect tasks on a thread pool or a Dask cluster.

With ``detect.devices`` (two or more GPUs, or CPU workers) the run has one shard per device
and ``run_shard`` scores shard k in its own worker process on device k (``worker_process``),
with its share of the CPU cores; the thread that called it waits. A worker that fails or is
killed fails its own shard only: the others' commits stand, and the next run does what it left.
"""

from __future__ import annotations

import heapq
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pandas as pd
import torch

from pam.config import ConfigError, PamConfig
from pam.detect.catalog import load_models
from pam.detect.contract import DetectionModel
from pam.detect.detection import (SEQ_SPAN, DetectionReport, data_path, default_readers, default_workers,
                                  detect_recordings, finish_run, plan_detection, resolve_device, run_row,
                                  usable_statuses)
from pam.detect.scoring import ModelPlan
from pam.detect.settings import settings_of
from pam.detect.progress import Progress, audio_bar
from pam.detect.worker_process import call_in_worker, cores_per_worker, progress_to_parent
from pam.io.manifest import check_store_outside, recordings_in
from pam.store.store import Store

log = logging.getLogger("pam.detect.shards")
Logger = logging.Logger | logging.LoggerAdapter


def split(todo: pd.DataFrame, n: int) -> list[list[str]]:
    """Recording ids in ``n`` shards of about equal audio: longest first, each to the lightest.

    Deterministic (ties broken by path); empty shards are dropped; each shard keeps path
    order so that a worker reads a folder front to back.
    """
    if todo.empty:
        return []
    n = max(1, min(n, len(todo)))
    order = todo.assign(_d=todo["duration_s"].fillna(0.0)).sort_values(["_d", "path"], ascending=[False, True])
    heap = [(0.0, k) for k in range(n)]
    members: list[list[tuple[str, str]]] = [[] for _ in range(n)]
    for rec, path, dur in zip(order["recording_id"], order["path"], order["_d"]):
        load, k = heapq.heappop(heap)
        members[k].append((str(path), str(rec)))
        heapq.heappush(heap, (load + float(dur), k))
    return [[rec for _path, rec in sorted(m)] for m in members if m]


def shard_count(config: PamConfig) -> int:
    """Shards of a run: one per device of ``detect.devices``, else ``runner.shards``."""
    return len(config.detect.devices) or config.runner.shards


def planning_device(config: PamConfig) -> torch.device:
    """Where the run's planner loads the models: the CPU when device workers score (no GPU
    memory held by a process that only waits), else the run's device."""
    return torch.device("cpu") if config.detect.devices else resolve_device(config.detect.device)


def worker_config(config: PamConfig, index: int) -> tuple[PamConfig, int]:
    """The config that device worker ``index`` runs under, and its torch threads: its own
    device, no device list, one shard, and loader workers or reader threads for its share of
    the cores (unless ``detect.num_workers`` says)."""
    devices = config.detect.devices
    cores = cores_per_worker(len(devices))
    device = resolve_device(devices[index % len(devices)])
    workers = config.detect.num_workers
    if workers is None:
        spans = data_path(config.detect, device) == "spans"
        workers = default_readers(device, cores) if spans else default_workers(device, cores)
    detect = config.detect.model_copy(update={"device": str(device), "devices": [], "num_workers": workers})
    return config.model_copy(update={"detect": detect, "runner": config.runner.model_copy(update={"shards": 1})}), cores


def begin_run(store: Store, dumps: list[str], config: PamConfig, *, force: bool = False,
              run_id: str | None = None, models: list[DetectionModel] | None = None) -> dict:
    """Plan a run, write its ``running`` row, and split its to-do list into shards.

    Returns a plain dict (run id, counts, shards as lists of recording ids) so that it can
    travel between Prefect tasks and Dask workers. Cleans up after a crashed run first.
    """
    for d in dumps:
        check_store_outside(store, d)
    store.ensure()
    store.recover(config.detect.lock_timeout_s)
    device = planning_device(config)
    models = models or load_models(config.model_specs(), device=device)
    plan = plan_detection(store, recordings_in(store, dumps), models, config.detect, force=force, run_id=run_id,
                          sites=config.sites)
    devices = ";".join(dict.fromkeys(config.detect.devices)) or str(device)
    row = run_row(plan, config.detect, devices, ";".join(dumps))
    store.write_run(row)
    shards = split(plan.todo, shard_count(config))
    log.info("run %s: %d recordings, %d already done with model %s settings %s, %d to do in %d shard(s)",
             plan.run_id, plan.total, plan.skipped, plan.model_id, plan.key, len(plan.todo), len(shards))
    return {"run_id": plan.run_id, "model_id": plan.model_id, "settings_hash": plan.key,
            "recordings_total": plan.total, "recordings_skipped": plan.skipped, "todo": len(plan.todo),
            "audio_s": float(plan.todo["duration_s"].sum()) if len(plan.todo) else 0.0, "shards": shards}


def run_shard(store_root: str, dumps: list[str], recording_ids: list[str], config: PamConfig | dict,
              run_id: str, index: int, *, force: bool = False, progress: Progress = False,
              logger: Logger | None = None, models: list[DetectionModel] | None = None) -> dict:
    """Score one shard's recordings and commit them under ``run_id``; safe to call again.

    Recordings already committed (by anyone, or with ``force`` by this run) are skipped, so
    a retried shard only does what its failed attempt left. With ``detect.devices`` the shard
    is scored in a worker process of its own on device ``index`` (``models`` unused there).
    ``progress``: a bar of the shard's own, none, or a callable that takes the audio scored in
    milliseconds (the run's one bar; from a worker process it comes back through the pipe).
    """
    conf = config if isinstance(config, PamConfig) else PamConfig.model_validate(config)
    if conf.detect.devices:
        mine, threads = worker_config(conf, index)
        (logger or log).info("shard %d: %d recordings on %s in a worker process (%d threads)", index,
                             len(recording_ids), mine.detect.device, threads)
        return call_in_worker(run_shard, (store_root, dumps, recording_ids, mine.model_dump(mode="json"), run_id,
                                          index), {"force": force, "progress": progress_to_parent if progress else False},
                              name=f"pam-detect-shard-{index}", threads=threads, logger=logger,
                              on_progress=progress if callable(progress) else None)
    store = Store(store_root)
    device = resolve_device(conf.detect.device)
    models = models or load_models(conf.model_specs(), device=device)
    wanted = set(recording_ids)
    rows = recordings_in(store, dumps)
    rows = rows[rows["recording_id"].isin(wanted) & rows["status"].isin(usable_statuses(conf.detect))]
    rows = rows.drop_duplicates("recording_id").sort_values("path")
    plans = []
    for model, settings in zip(models, settings_of(conf.detect, models, conf.sites)):
        key = settings.key()
        done = store.done_table(model.model_id, key)
        if force:
            done = done[done["run_id"] == run_id]
        plans.append(ModelPlan(model, settings, key, set(rows["recording_id"]) - set(done["recording_id"])))
    todo = rows[rows["recording_id"].isin(set().union(*(p.todo_ids for p in plans)))]
    report = detect_recordings(store, todo, plans, conf.detect, run_id=run_id, force=force,
                               retries=conf.retries, seq_start=index * SEQ_SPAN, seq_end=(index + 1) * SEQ_SPAN,
                               device=device, progress=progress, logger=logger)
    return {"shard": index, "host": socket.gethostname(), "device": str(device), "recordings": len(wanted),
            "attempted": len(todo), "recordings_done": report.recordings_done, "detections": report.detections,
            "audio_s": report.audio_s, "failures": report.failures}


def shard_error(index: int, recording_ids: list[str], exc: BaseException) -> dict:
    """A failure entry for a shard that gave up as a whole (its recordings stay to do).

    ``end_run`` replaces the shard's ids by the number it left undone.
    """
    reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return {"path": f"(shard {index})", "stage": "shard", "status": "failed", "shard": index,
            "reason": reason + "; its recordings are left for the next run", "site": None,
            "recording_ids": list(recording_ids)}


def end_run(store: Store, run_id: str, results: list[dict], *, scan_failures: list[dict] | None = None,
            shard_errors: list[dict] | None = None, dumps: list[str] | None = None) -> DetectionReport:
    """Count what the run committed, write its final row and its failure report."""
    row = store.read_run(run_id)
    if row is None:
        raise RuntimeError(f"run {run_id} has no row in {store.runs_dir}; was it started with begin_run?")
    keys = list(zip(str(row["model_id"]).split(";"), str(row["settings_hash"]).split(";")))
    done = pd.concat([store.done_table(m, k) for m, k in keys], ignore_index=True)
    mine = done[done["run_id"] == run_id]
    # a recording counts once however many models scored it (each model's work key is its own row)
    committed = {r for r, n in done.groupby("recording_id")["model_id"].nunique().items() if n == len(keys)}
    errors = []
    for e in shard_errors or []:
        e = dict(e)
        left = len(set(e.pop("recording_ids", [])) - committed)
        errors.append({**e, "path": f"(shard {e['shard']}: {left} recordings left)", "recordings": left})
    failures = list(scan_failures or []) + [f for r in results for f in r["failures"]] + errors
    report = DetectionReport(
        run_id, row["model_id"], row["settings_hash"],
        recordings_total=int(row["recordings_total"] or 0), recordings_done=int(mine["recording_id"].nunique()),
        recordings_skipped=int(row["recordings_skipped"] or 0), failures=failures,
        detections=int(mine["detections"].sum()) if len(mine) else 0,
        audio_s=float(mine.drop_duplicates("recording_id")["audio_s"].sum()) if len(mine) else 0.0,
    )
    started = pd.Timestamp(row["started_at"]).to_pydatetime()
    report.wall_s = (datetime.now(timezone.utc) - started).total_seconds()
    hosts = {row["host"]} | {r["host"] for r in results}
    devices = {row["device"]} | {r["device"] for r in results}
    row.update(host=";".join(sorted(h for h in hosts if h)), device=";".join(sorted(d for d in devices if d)))
    finish_run(store, row, report, dumps=dumps)
    return report


def require_in_process_runner(config: PamConfig) -> None:
    """Without Prefect, shards run on threads of this process; a Dask runner needs the flow."""
    if config.runner.kind == "dask":
        raise ConfigError("runner.kind: dask runs through the Prefect flow; run `pam detect` without "
                          "--no-prefect, or set runner.kind: threads")


def detect_sharded(store: Store, dumps: list[str], config: PamConfig, *, force: bool = False,
                   scan_failures: list[dict] | None = None, progress: bool = True,
                   logger: Logger | None = None) -> DetectionReport:
    """A whole detection run without Prefect: shards in threads of this process.

    Holds the store's run lock; a shard that raises is retried ``retries.count`` times and
    then reported, and the run goes on with the other shards.
    """
    logger = logger or log
    require_in_process_runner(config)
    for d in dumps:  # before the lock, which would create the store
        check_store_outside(store, d)
    with store.run_lock(config.runner.wait_s, what=f"detect {';'.join(dumps)}"):
        models = load_models(config.model_specs(), device=planning_device(config))
        start = begin_run(store, dumps, config, force=force, models=models)
        shards = start["shards"]
        logger.info("run %s: %d recordings, %d already done, %d to do in %d shard(s)", start["run_id"],
                    start["recordings_total"], start["recordings_skipped"], start["todo"], len(shards))

        # one bar for the run: shards in threads or worker processes pass it what they score
        shared = progress and (len(shards) > 1 or bool(config.detect.devices))
        bar = audio_bar(int(round(start["audio_s"] * 1000))) if shared else None
        bar_lock = threading.Lock()

        def one(index: int) -> dict:
            for attempt in range(config.retries.count + 1):
                shown = [0]  # this attempt's share of the bar, taken off again if it fails

                def advance(ms: int) -> None:
                    with bar_lock:
                        shown[0] += ms
                        bar.update(ms)

                try:
                    return run_shard(store.uri, dumps, shards[index], config, start["run_id"], index,
                                     force=force, progress=advance if shared else progress, logger=logger,
                                     models=models if len(shards) == 1 else None)
                except Exception as exc:  # noqa: BLE001 - reported, the other shards go on
                    if shown[0]:
                        advance(-shown[0])
                    if attempt == config.retries.count:
                        logger.error("shard %d failed: %s", index, exc)
                        return {"error": shard_error(index, shards[index], exc)}
                    logger.warning("shard %d failed (%s); retrying in %.0f s", index, exc, config.retries.delay_s)
                    time.sleep(config.retries.delay_s)
            raise AssertionError("unreachable")

        try:
            if len(shards) <= 1:
                outcomes = [one(k) for k in range(len(shards))]
            else:
                with ThreadPoolExecutor(max_workers=config.runner.max_workers or len(shards),
                                        thread_name_prefix="pam-shard") as pool:
                    outcomes = list(pool.map(one, range(len(shards))))
        finally:
            if bar is not None:
                bar.close()
        results = [o for o in outcomes if "error" not in o]
        errors = [o["error"] for o in outcomes if "error" in o]
        report = end_run(store, start["run_id"], results, scan_failures=scan_failures, shard_errors=errors,
                         dumps=dumps)
    logger.info("run %s: %d recordings scored (%.2f h audio), %d detections, %d failed; %s",
                report.run_id, report.recordings_done, report.audio_s / 3600, report.detections,
                report.recordings_failed, report.failure_report or "no failure report needed")
    return report
