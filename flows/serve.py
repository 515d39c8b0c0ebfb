"""The deployments ``pam serve`` serves: the nightly flow on the config's cron and the
training flows on demand (Prefect wiring only; the schedule's logic is in pam.ops.schedule)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from flows.nightly import nightly
from flows.train import hyperparameter_search, train_flow
from pam.config import PamConfig
from pam.ops.schedule import load_for_serving, schedule_zone

def nightly_deployment(config_file: str | os.PathLike, conf: PamConfig | None = None):
    """The nightly flow on the config's cron, with the config file as its only parameter."""
    from prefect.schedules import Cron

    path = str(Path(config_file).expanduser().resolve())
    conf = conf or load_for_serving(path)
    return nightly.to_deployment(
        name=conf.schedule.name,
        schedule=Cron(conf.schedule.cron, timezone=schedule_zone(conf)),
        parameters={"config_file": path},
        description=f"pam nightly run over {', '.join(conf.schedule.dumps)} into {conf.schedule.store}",
        tags=["pam", "nightly"],
    )


def training_deployments() -> list:
    """The training flows (``pam-train``, ``pam-train-search``) as deployments without a
    schedule, started by hand with their parameters."""
    return [f.to_deployment(name="on-demand", description=f"{f.name}, started by hand", tags=["pam", "train"])
            for f in (train_flow, hyperparameter_search)]


def deployments(config_file: str | os.PathLike) -> list:
    """Everything ``pam serve`` serves: the nightly schedule and, when present, training."""
    return [nightly_deployment(config_file)] + training_deployments()


def serve(config_file: str | os.PathLike, limit: int | None = 2, announce=print) -> None:
    """Serve the deployments from this process until interrupted (Ctrl-C or SIGTERM stops it).

    With no PREFECT_API_URL a local server is started for the schedule and stopped with it.
    """
    from prefect import serve as prefect_serve

    from pam.ops.prefect_server import api_configured, prefect_api

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
