"""The nightly job's stages as plain functions: scan, detect, summarise.

Each stage reads the store and writes the store, so it can be rerun alone; nothing but
paths and small dicts passes between them. ``flows/nightly.py`` wraps each stage in a
Prefect task; ``run_nightly`` chains them without Prefect for notebooks and quick runs.
"""

from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from pam.config import PamConfig
from pam.detect.detection import DetectionReport
from pam.ops.agile import apply_heads_stage, index_stage, plan_agile
from pam.io.manifest import USABLE, ScanError, check_store_outside, scan, site_of
from pam.io.manifest import recordings_in  # noqa: F401 - part of this module's API (pam.cli, notebooks)
from pam.detect.shards import detect_sharded, require_in_process_runner
from pam.store.analysis_config import remember_analysis_config
from pam.store.store import Store

log = logging.getLogger("pam.ops.pipeline")


@dataclass
class ScanSummary:
    dump: str
    files: int = 0
    usable: int = 0
    reopened: int = 0
    pending: int = 0
    problems: list[dict] = field(default_factory=list)  # {"path", "stage", "reason"}
    error: str | None = None  # the whole dump could not be scanned


def scan_stage(dump: str | Path, store: Store, config: PamConfig,
               logger: logging.Logger | logging.LoggerAdapter | None = None) -> ScanSummary:
    """Scan one dump; a dump that cannot be scanned is reported, not raised."""
    logger = logger or log
    summary = ScanSummary(str(dump))
    try:
        result = scan(dump, store, config)
    except ScanError as exc:
        summary.error = str(exc)
        summary.problems.append({"path": str(dump), "stage": "scan", "reason": exc.reason})
        logger.error("%s", exc)
        return summary
    remember_analysis_config(store, config)  # the clocks these start times were read with, for the summaries
    rows = result.rows
    summary.dump = str(result.dump)
    summary.files = len(rows)
    summary.usable = int(rows["status"].isin(USABLE).sum()) if len(rows) else 0
    summary.reopened = result.reopened
    summary.pending = len(result.pending)
    for r in rows[rows["status"] != "ok"].itertuples(index=False) if len(rows) else []:
        summary.problems.append({"path": r.path, "stage": "scan", "status": r.status, "reason": r.reason,
                                 "site": r.site if isinstance(r.site, str) else None})
        logger.warning("%s: %s (%s)", r.path, r.reason, r.status)
    for path, reason in result.pending_reasons.items():
        summary.problems.append({"path": path, "stage": "scan", "status": "pending", "reason": reason,
                                 "site": site_of(Path(path), result.dump, config)})
        logger.info("%s: left for the next run: %s", path, reason)
    if result.reclocked:
        logger.warning("%d Song Meter recording(s) in %s have new start times from the site clocks in the config; "
                       "their earlier detections were removed and they will be analysed again",
                       len(result.reclocked), summary.dump)
    undated = rows[rows["status"].isin(USABLE) & rows["start_time"].isna()] if len(rows) else rows
    if len(undated):
        logger.warning("%d usable file(s) in %s have no start time (no recorder time stamp in the name or header, "
                       "or an impossible one), e.g. %s: their detections carry no time and the summaries leave "
                       "them out", len(undated), summary.dump, Path(undated["path"].iloc[0]).name)
    repeated = result.repeated
    if repeated:
        logger.warning("%d file(s) in %s repeat another file's site, recorder, start time and length, e.g. %s and %s: "
                       "copies under another name? Each is analysed and counted; delete or move the copies",
                       len(repeated), summary.dump, repeated[0][0], repeated[0][1])
    unclocked = sorted({s for s, r in zip(rows["site"], rows["recorder"]) if r == "songmeter"
                        and s not in config.sites}) if len(rows) else []
    if unclocked:
        logger.warning("Song Meter file names give local time, but site(s) %s have no timezone or utc_offset in the "
                       "config (sites.<site>); their times were read as UTC", ", ".join(map(str, unclocked)))
    logger.info("scanned %s: %d files, %d usable, %d opened, %d left for later (still being written)",
                summary.dump, summary.files, summary.usable, summary.reopened, summary.pending)
    return summary


def check_config_sites(store: Store, config: PamConfig,
                       logger: logging.Logger | logging.LoggerAdapter | None = None) -> list[str]:
    """Warn, one line each, about config sites that no recording in the store has (a typo such as
    ``SM4CREEK`` for ``SM4-CREEK`` leaves that site on UTC); call after all of a run's scans."""
    if not config.sites:
        return []
    known = sorted({s for s in store.read_manifest()["site"] if isinstance(s, str)})
    if not known:
        return []
    squeezed = {re.sub(r"[^0-9a-z]", "", s.lower()): s for s in known}
    messages = []
    for site in sorted(set(config.sites) - set(known)):
        near = squeezed.get(re.sub(r"[^0-9a-z]", "", site.lower())) or \
            next(iter(difflib.get_close_matches(site, known, n=1, cutoff=0.6)), None)
        hint = f"did you mean {near}?" if near else f"the store's sites: {', '.join(known[:10])}" + \
            (", ..." if len(known) > 10 else "")
        messages.append(f"sites.{site} in the config matches no recording's site, so its clock and position go unused "
                        f"({hint})")
    for m in messages:
        (logger or log).warning("%s", m)
    return messages


def detect_stage(store: Store, dumps: list[str], config: PamConfig, *, force: bool = False,
                 progress: bool = True, scan_problems: list[dict] | None = None,
                 logger: logging.Logger | logging.LoggerAdapter | None = None) -> DetectionReport:
    """Score the usable recordings of ``dumps`` that the store has not done yet
    (in ``runner.shards`` shards on threads of this process, or one worker process per
    device of ``detect.devices``)."""
    for d in dumps:
        check_store_outside(store, d)
    return detect_sharded(store, [str(d) for d in dumps], config, force=force, scan_failures=scan_problems,
                          progress=progress, logger=logger)


def summarize_stage(store: Store, config: PamConfig,
                    logger: logging.Logger | logging.LoggerAdapter | None = None) -> Path:
    """Summaries (incremental), ``STORE/reports/report.html``, and Prefect artifacts inside a flow."""
    from pam.analysis.report import nightly_summary

    report = nightly_summary(store, config, logger=logger or log)
    maintain_store(store, config, logger=logger or log)
    return report


def maintain_store(store: Store, config: PamConfig,
                   logger: logging.Logger | logging.LoggerAdapter | None = None) -> None:
    """After the summaries (which follow the run's own files): compact the detection partitions
    (site, UTC month) and sites' done files holding more than one file (those written since their last compaction, so the ones this
    run touched), then delete files removed more than ``store.retention_days`` ago."""
    logger = logger or log
    if config.store.compact:
        done = store.compact()
        if done.partitions:
            logger.info("compacted %d partitions (%d files, %d rows) of %s", done.partitions, done.files_before,
                        done.rows, store.uri)
    deleted = store.vacuum(config.store.retention_days)
    if deleted:
        logger.info("deleted %d files removed more than %g days ago from %s", len(deleted),
                    config.store.retention_days, store.uri)


@dataclass
class NightlyRun:
    """What ``run_nightly`` did: the scans, the detection report, and one small dict per head
    applied and per similarity index updated (``pam.ops.agile``). Unpacks as ``scans, report``."""
    scans: list[ScanSummary]
    report: DetectionReport
    heads: list[dict] = field(default_factory=list)
    indexes: list[dict] = field(default_factory=list)

    def __iter__(self):
        return iter((self.scans, self.report))


def run_nightly(dumps: list[str], store: Store, config: PamConfig, *, force: bool = False,
                progress: bool = True) -> NightlyRun:
    """scan -> detect -> (registered heads, similarity indexes: ``config.agile``) -> summarise, in
    this process, without Prefect.

    Holds the store's run lock throughout (``runner.wait_s``), so a second run on the same
    store waits or stops with StoreBusy instead of doing the same work twice.
    """
    require_in_process_runner(config)  # before anything is written
    for d in dumps:  # before the lock, which would create the store
        check_store_outside(store, d)
    agile = plan_agile(store, config)  # registered heads of this run's models (ConfigError otherwise)
    with store.run_lock(config.runner.wait_s, what=f"nightly {';'.join(str(d) for d in dumps)}"):
        scans = [scan_stage(d, store, config) for d in dumps]
        check_config_sites(store, config)
        problems = [p for s in scans for p in s.problems]
        ok_dumps = [s.dump for s in scans if s.error is None]
        report = detect_stage(store, ok_dumps, config, force=force, progress=progress, scan_problems=problems)
        heads = apply_heads_stage(store, agile)  # before the summaries, which count the heads' detections
        indexes = index_stage(store, agile)
        summarize_stage(store, config)
    return NightlyRun(scans, report, heads, indexes)


def check_detect_settings(config: PamConfig, *, prefect: bool) -> None:
    """The models and detection settings are usable: every model loads (ModelError: a missing
    or corrupt file, a bad card), the device exists, the window fits each model, and without
    Prefect the runner runs in this process (ConfigError). Imports torch: check the paths
    first, they answer at once."""
    from pam.detect.catalog import load_models
    from pam.detect.detection import resolve_device
    from pam.detect.settings import settings_of

    if not prefect:
        require_in_process_runner(config)
    for device in [config.detect.device, *config.detect.devices]:
        resolve_device(device)
    settings_of(config.detect, load_models(config.model_specs(), device="cpu"), config.sites)
