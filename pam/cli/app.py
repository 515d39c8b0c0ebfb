"""The typer app and the helpers every command shares (options, config loading, errors).

The commands live beside this module (one module per area) and register on ``app`` when
``pam.cli.main`` imports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd
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


def time_texts(times: pd.Series) -> list[str]:
    """Timestamps as ``YYYY-MM-DD HH:MM:SS[.fff]`` in their own zone, all with the decimals the column needs.

    A window starting at 05:00:01.5 must not read 05:00:01: every time of the column gets as
    many decimals of a second (0 to 6) as its most precise one needs. Missing times are ''.
    """
    times = pd.Series(times)
    micro = times.dropna().map(lambda t: t.microsecond).to_numpy(dtype="int64")
    digits = next(d for d in range(7) if not (micro % 10 ** (6 - d)).any())
    return [t.strftime("%Y-%m-%d %H:%M:%S") + (f".{t.microsecond:06d}"[:digits + 1] if digits else "")
            if pd.notna(t) else "" for t in times]


StoreOpt = typer.Option(..., "--store", "-s", help="store folder (created if missing)")
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (see configs/detect.yaml)")
