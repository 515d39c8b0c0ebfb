"""The nightly Prefect flow: scan each dump, detect, summarise.

Thin on purpose: every task is one call into ``pam.pipeline``. Tasks take and return paths
and small dicts, never audio. Scanning and summarising retry on I/O errors; detection is
idempotent (the store's work key), so its retry resumes rather than repeats.

Run it as a plain call, no server needed::

    from flows.nightly import nightly
    nightly(["/data/dumps/2024-05-01"], store="/data/pam-store")
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger, task

from pam.config import PamConfig
from pam.pipeline import detect_stage, scan_stage, summarize_stage
from pam.store import Store


@task(name="scan", retries=2, retry_delay_seconds=10)
def scan_task(dump: str, store: str, config: dict) -> dict:
    return asdict(scan_stage(dump, Store(store), PamConfig.model_validate(config), logger=get_run_logger()))


@task(name="detect", retries=1, retry_delay_seconds=30)
def detect_task(store: str, dumps: list[str], config: dict, force: bool, scan_problems: list[dict]) -> dict:
    report = detect_stage(Store(store), dumps, PamConfig.model_validate(config), force=force,
                          progress=True, scan_problems=scan_problems, logger=get_run_logger())
    return {**asdict(report), "recordings_failed": report.recordings_failed, "speed": report.speed}


@task(name="summarize", retries=2, retry_delay_seconds=10)
def summarize_task(store: str, config: dict) -> str:
    return str(summarize_stage(Store(store), PamConfig.model_validate(config)))


@flow(name="pam-nightly", log_prints=True)
def nightly(dumps: list[str], store: str, config: dict | None = None, force: bool = False) -> dict:
    """Turn recorder dumps into detections and daily counts in ``store``."""
    conf = PamConfig.model_validate(config or {})
    plain = conf.model_dump(mode="json")
    scans = [scan_task(d, store, plain) for d in dumps]
    problems = [p for s in scans for p in s["problems"]]
    ok = [s["dump"] for s in scans if s["error"] is None]
    report = detect_task(store, ok, plain, force, problems)
    summary = summarize_task(store, plain)
    get_run_logger().info("daily counts written to %s", summary)
    return {"scans": scans, "detect": report, "summary": summary}
