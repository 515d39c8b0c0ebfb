"""The typer app and the helpers every command shares (options, config loading, errors).

The commands live beside this module (one module per area) and register on ``app`` when
``pam.cli.main`` imports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from pam.config import ConfigError, PamConfig, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="pam: passive acoustic monitoring, from recorder dumps to detections.")
console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    for line in message.splitlines():
        err.print(f"[red]error:[/red] {line}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def cli_config(path: Optional[Path], **overrides) -> PamConfig:
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable


StoreOpt = typer.Option(..., "--store", "-s", help="store folder (created if missing)")
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (see configs/detect.yaml)")
