"""Commands of unattended operation: serve the nightly schedule."""

from __future__ import annotations

from pathlib import Path

import typer

from pam.cli.app import app, console, fail
from pam.config import ConfigError


@app.command()
def serve(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config with a schedule section "
                                                             "(see configs/nightly.yaml)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check the config, show the next runs, start nothing"),
) -> None:
    """Run the nightly flow on its schedule from this machine (Ctrl-C stops it)."""
    from flows.serve import training_deployments
    from pam.ops.prefect_server import quiet_prefect_defaults
    from pam.ops.schedule import load_for_serving, next_runs, schedule_zone

    quiet_prefect_defaults()
    try:
        conf = load_for_serving(config)
    except ConfigError as exc:
        fail(str(exc))
        return
    zone = schedule_zone(conf)
    console.print(f"pam-nightly/{conf.schedule.name}: cron '{conf.schedule.cron}' ({zone}), dumps "
                  f"{', '.join(conf.schedule.dumps)} -> store {conf.schedule.store}", highlight=False, soft_wrap=True)
    for when in next_runs(conf):
        console.print(f"  next run: {when:%Y-%m-%d %H:%M %Z}", highlight=False)
    for dep in training_deployments():
        console.print(f"{dep.flow_name}/{dep.name}: on demand (prefect deployment run '{dep.flow_name}/{dep.name}' "
                      "--params '{\"config\": {...}}')", highlight=False, soft_wrap=True, markup=False)
    if dry_run:
        return
    from pam.ops.prefect_server import PrefectServerError
    from flows.serve import serve as serve_deployments

    try:
        serve_deployments(config, announce=lambda m: console.print(m, highlight=False, soft_wrap=True, markup=False))
    except PrefectServerError as exc:
        fail(str(exc), code=1)
