"""Scheduling: the nightly flow as a Prefect deployment, on the cron of the config.

``pam serve --config FILE`` builds the deployments here and serves them from this process
(one machine: no worker, no work pool; without PREFECT_API_URL it runs a local Prefect server
for the schedule, since Prefect's temporary server has no scheduler). A deployment carries only the config file's path;
the flow reads the file when each run starts, so the watched dumps and the store can be
edited without redeploying. The lab set-up (a Prefect server, a work pool, one worker per
GPU box) uses ``prefect.yaml`` instead; see docs/operations.md.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pam.config import ConfigError, PamConfig, load_config

log = logging.getLogger("pam.schedule")
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


def nightly_deployment(config_file: str | os.PathLike, conf: PamConfig | None = None):
    """The nightly flow on the config's cron, with the config file as its only parameter."""
    from prefect.schedules import Cron

    from flows.nightly import nightly

    path = str(Path(config_file).expanduser().resolve())
    conf = conf or load_for_serving(path)
    return nightly.to_deployment(
        name=conf.schedule.name,
        schedule=Cron(conf.schedule.cron, timezone=schedule_zone(conf)),
        parameters={"config_file": path},
        description=f"pam nightly run over {', '.join(conf.schedule.dumps)} into {conf.schedule.store}",
        tags=["pam", "nightly"],
    )


TRAINING_FLOWS = ("pam-train", "pam-train-search")


def training_deployments() -> list:
    """The training flows of ``flows/train.py`` (``pam-train``, ``pam-train-search``) as
    deployments without a schedule, started by hand with their parameters; none when that
    module is absent."""
    from prefect import Flow

    try:
        module = importlib.import_module("flows.train")
    except ModuleNotFoundError as exc:
        if exc.name == "flows.train":
            return []
        raise
    found = {v.name: v for v in vars(module).values() if isinstance(v, Flow) and v.name in TRAINING_FLOWS}
    return [found[name].to_deployment(name="on-demand", description=f"{name}, started by hand",
                                      tags=["pam", "train"]) for name in TRAINING_FLOWS if name in found]


def deployments(config_file: str | os.PathLike) -> list:
    """Everything ``pam serve`` serves: the nightly schedule and, when present, training."""
    return [nightly_deployment(config_file)] + training_deployments()


def serve(config_file: str | os.PathLike, limit: int | None = 2, announce=print) -> None:
    """Serve the deployments from this process until interrupted (Ctrl-C or SIGTERM stops it).

    With no PREFECT_API_URL a local server is started for the schedule and stopped with it.
    """
    from prefect import serve as prefect_serve

    from pam.prefect_server import api_configured, prefect_api

    def stop(signum, frame):  # a service manager's SIGTERM: leave through the finally blocks
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    if api_configured():
        prefect_serve(*deployments(config_file), limit=limit, print_starting_message=True)
        return
    with prefect_api() as (api, pid):
        announce(f"started a local Prefect server for the schedule: {api} (pid {pid}; UI at {api.removesuffix('/api')}); "
                 f"it stops with pam serve. Start a run by hand: PREFECT_API_URL={api} prefect deployment run "
                 "'pam-nightly/<schedule.name>'")
        prefect_serve(*deployments(config_file), limit=limit, print_starting_message=True)
