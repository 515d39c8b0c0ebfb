"""Scheduling: the config's schedule section, its time zone and its next start times.

``pam serve --config FILE`` checks the config here (``load_for_serving``), then builds the
deployments in ``flows/serve.py`` and serves them from this process
(one machine: no worker, no work pool; without PREFECT_API_URL it runs a local Prefect server
for the schedule, since Prefect's temporary server has no scheduler). A deployment carries only the config file's path;
the flow reads the file when each run starts, so the watched dumps and the store can be
edited without redeploying. The lab set-up (a Prefect server, a work pool, one worker per
GPU box) uses ``prefect.yaml`` instead; see docs/operations.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pam.config import ConfigError, PamConfig, load_config

log = logging.getLogger("pam.ops.schedule")
NIGHTLY_FLOW = "pam-nightly"


def local_timezone() -> str:
    """This machine's IANA time zone name (``TZ``, ``/etc/localtime``, ``/etc/timezone``), else UTC."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    try:
        candidates.append(Path("/etc/timezone").read_text().strip())
    except OSError:
        pass
    for name in candidates:
        if name and ("/" in name or name == "UTC"):
            try:
                ZoneInfo(name)
                return name
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return "UTC"


def schedule_zone(conf: PamConfig) -> str:
    return conf.schedule.timezone or local_timezone()


def next_runs(conf: PamConfig, n: int = 3, after: datetime | None = None) -> list[datetime]:
    """The next ``n`` start times of the nightly schedule after ``after`` (default: now), in its time zone.

    Computed by the Prefect server's own cron schedule, so they are the times the runs will
    get: on the wall clock (02:30 stays 02:30 across a DST change); a wall time that the
    clocks skip runs as much later as they jump (02:30 becomes 03:30 that night).
    """
    from prefect.server.schemas.schedules import CronSchedule

    name = schedule_zone(conf)
    zone = ZoneInfo(name)
    start = (after or datetime.now(zone)) + timedelta(microseconds=1)  # get_dates returns times on or after start
    dates = asyncio.run(CronSchedule(cron=conf.schedule.cron, timezone=name).get_dates(n=n, start=start))
    return [datetime.fromtimestamp(d.timestamp(), zone) for d in dates]


def load_for_serving(config_file: str | os.PathLike) -> PamConfig:
    """The config, checked for what a schedule needs: dumps and a store outside them."""
    conf = load_config(config_file)
    problems = []
    if not conf.schedule.dumps:
        problems.append(f"{config_file}: schedule.dumps: no watched dump folder; list at least one")
    if not conf.schedule.store:
        problems.append(f"{config_file}: schedule.store: not set; name the store the nightly runs write to")
    if problems:
        raise ConfigError("\n".join(problems))
    for dump in conf.schedule.dumps:
        if not Path(dump).expanduser().is_dir():
            log.warning("watched dump %s does not exist yet; runs report it until it appears", dump)
    return conf
