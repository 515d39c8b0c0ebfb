"""The nightly Prefect flow: scan each dump, detect in shards, apply registered heads and update
the similarity indexes (config ``agile``), summarise.

Thin on purpose: every task is one call into ``pam``. Tasks take and return paths, ids and
small dicts, never audio. The flow holds the store's run lock, so a second run on the same
store waits ``runner.wait_s`` and then stops with a clear message.

Detection is its own subflow, ``pam-detect``: one task plans the run, one task per shard
scores (submitted to a thread pool, or to a Dask cluster with ``runner.kind: dask``), one
task counts what was committed and publishes the failure report as a markdown artifact.
Shards are idempotent (the store's work key), so a retried shard resumes, never repeats.

Run it as a plain call, no server needed::

    from flows.nightly import nightly
    nightly(["/data/dumps/2024-05-01"], store="/data/pam-store")

or scheduled: ``pam serve --config configs/nightly.yaml`` (see docs/operations.md).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from pam.config import PamConfig, RunnerConfig, load_config
from pam.store.failures import render_markdown
from pam.io.manifest import check_store_outside
from pam.ops.agile import AgilePlan, apply_heads_stage, index_stage, plan_agile
from pam.ops.pipeline import check_config_sites, scan_stage, summarize_stage
from pam.detect.shards import begin_run, end_run, run_shard, shard_error
from pam.store.store import Store, StoreBusy


@task(name="scan", retries=2, retry_delay_seconds=10)
def scan_task(dump: str, store: str, config: dict) -> dict:
    return asdict(scan_stage(dump, Store(store), PamConfig.model_validate(config), logger=get_run_logger()))


@task(name="plan-detection")
def plan_task(store: str, dumps: list[str], config: dict, force: bool) -> dict:
    return begin_run(Store(store), dumps, PamConfig.model_validate(config), force=force)


@task(name="detect-shard")
def shard_task(store: str, dumps: list[str], recording_ids: list[str], config: dict, run_id: str, index: int,
               force: bool) -> dict:
    return run_shard(store, dumps, recording_ids, config, run_id, index, force=force, progress=False,
                     logger=get_run_logger())


@task(name="finish-detection")
def finish_task(store: str, run_id: str, results: list[dict], shard_errors: list[dict],
                scan_problems: list[dict], dumps: list[str]) -> dict:
    report = end_run(Store(store), run_id, results, scan_failures=scan_problems, shard_errors=shard_errors,
                     dumps=dumps)
    create_markdown_artifact(markdown=render_markdown(run_id, report.failures, dumps), key="pam-failures",
                             description=f"pam run {run_id}: failed and skipped files per site")
    if report.failures:
        get_run_logger().warning("run %s: %d failed, %d problem file(s) in all; report: %s", run_id,
                                 report.recordings_failed, len(report.failures), report.failure_report)
    return {**asdict(report), "recordings_failed": report.recordings_failed, "speed": report.speed}


def task_runner(runner: RunnerConfig):
    """The Prefect task runner that ``runner`` asks for: threads here, or a Dask cluster."""
    if runner.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=runner.max_workers or runner.shards)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:  # pragma: no cover - prefect-dask is a dependency
        raise RuntimeError("runner.kind: dask needs prefect-dask (pip install prefect-dask)") from exc
    if runner.dask_address:
        return DaskTaskRunner(address=runner.dask_address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": runner.dask_workers,
                                          "threads_per_worker": runner.dask_threads_per_worker,
                                          "processes": True, "dashboard_address": None})


@flow(name="pam-detect")
def detect_flow(store: str, dumps: list[str], config: dict, force: bool = False,
                scan_problems: list[dict] | None = None) -> dict:
    """Detection in shards on this flow's task runner; one run row for the whole run."""
    conf = PamConfig.model_validate(config)
    start = plan_task(store, dumps, config, force)
    shard = shard_task.with_options(retries=conf.retries.count, retry_delay_seconds=conf.retries.delay_s)
    futures = [shard.submit(store, dumps, ids, config, start["run_id"], k, force)
               for k, ids in enumerate(start["shards"])]
    results, errors = [], []
    for k, future in enumerate(futures):
        try:
            results.append(future.result())
        except Exception as exc:  # noqa: BLE001 - reported; the other shards' work stands
            errors.append(shard_error(k, start["shards"][k], exc))
    return finish_task(store, start["run_id"], results, errors, scan_problems or [], dumps)


@task(name="apply-heads", retries=2, retry_delay_seconds=10)
def apply_heads_task(store: str, plan: dict) -> list[dict]:
    return apply_heads_stage(Store(store), AgilePlan(**plan), logger=get_run_logger())


@task(name="update-similarity-index", retries=2, retry_delay_seconds=10)
def index_task(store: str, plan: dict) -> list[dict]:
    return index_stage(Store(store), AgilePlan(**plan), logger=get_run_logger())


@task(name="summarize", retries=2, retry_delay_seconds=10)
def summarize_task(store: str, config: dict) -> str:
    # summaries (incremental), STORE/reports/report.html, and the run's table + markdown artifacts
    return str(summarize_stage(Store(store), PamConfig.model_validate(config), logger=get_run_logger()))


@flow(name="pam-nightly", log_prints=True)
def nightly(dumps: list[str] | None = None, store: str | None = None, config: dict | None = None,
            force: bool = False, config_file: str | None = None) -> dict:
    """Turn recorder dumps into detections and daily counts in ``store``.

    A deployment passes only ``config_file``: the watched dumps and the store come from its
    ``schedule`` section, read when the run starts, so editing the file needs no redeploy.
    """
    conf = PamConfig.model_validate(config) if config is not None else load_config(config_file)
    dumps = list(dumps or conf.schedule.dumps)
    store = store or conf.schedule.store
    if not dumps or not store:
        raise ValueError("nothing to do: give dumps and store, or a config_file whose schedule.dumps and "
                         "schedule.store are set")
    plain = conf.model_dump(mode="json")
    for d in dumps:  # before the lock, which would create the store
        check_store_outside(Store(store), d)
    agile = asdict(plan_agile(Store(store), conf))  # heads named but not registered, or of other models: stop here
    with ExitStack() as held:
        try:
            held.enter_context(Store(store).run_lock(conf.runner.wait_s, what=f"pam-nightly on {';'.join(dumps)}"))
        except StoreBusy as exc:
            # Another run is on this store: an expected deferral, not a failure (no failure
            # automation should fire); the next run picks up what is left.
            get_run_logger().warning("%s", exc)
            return {"busy": str(exc), "scans": [], "detect": None, "heads": [], "indexes": [], "summary": None}
        scan = scan_task.with_options(retries=conf.retries.count, retry_delay_seconds=conf.retries.delay_s)
        scans = [scan(d, store, plain) for d in dumps]
        check_config_sites(Store(store), conf, get_run_logger())
        problems = [p for s in scans for p in s["problems"]]
        ok = [s["dump"] for s in scans if s["error"] is None]
        report = detect_flow.with_options(task_runner=task_runner(conf.runner))(store, ok, plain, force, problems)
        heads = apply_heads_task(store, agile) if agile["heads"] else []  # counted by the summaries below
        indexes = index_task(store, agile) if agile["similarity_index"] else []
        summary = summarize_task(store, plain)
    get_run_logger().info("summaries written to %s", summary)
    return {"scans": scans, "detect": report, "heads": heads, "indexes": indexes, "summary": summary}
