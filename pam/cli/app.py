"""The typer app and the helpers every command shares (options, config loading, errors).

The commands live beside this module (one module per area) and register on ``app`` when
``pam.cli.main`` imports them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import pandas as pd
import typer
from rich.console import Console, ConsoleDimensions

from pam.config import ConfigError, PamConfig, load_config
from pam.store.location import NotOnObjectStorage, require_local_root
from pam.store.store import Store

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="pam: passive acoustic monitoring, from recorder dumps to detections.")
# Tables go to a terminal at its width; into a pipe or a log file (cron, a nightly service)
# rich would fold them at 80 columns, cutting species names mid-word, so they get 160 there
# (COLUMNS, when set, still decides).
PIPED_WIDTH = 160


def output_width(stream) -> int | None:
    """The width rich should use for ``stream``: None (rich decides) for a terminal or when
    COLUMNS is set, else ``PIPED_WIDTH``."""
    if os.environ.get("COLUMNS") or (hasattr(stream, "isatty") and stream.isatty()):
        return None
    return PIPED_WIDTH


class PipeWideConsole(Console):
    """A rich Console that, writing into a pipe or file without COLUMNS set, is ``PIPED_WIDTH``
    wide; decided at each print (CliRunner and notebooks swap sys.stdout after import)."""

    @property
    def size(self) -> ConsoleDimensions:
        base = Console.size.fget(self)
        width = output_width(self.file)
        return ConsoleDimensions(width, base.height) if width is not None else base

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)


console = PipeWideConsole()
err = PipeWideConsole(stderr=True)


def counted(n: int, noun: str) -> str:
    """``1 recording``, ``2 recordings``: a count and its noun, for the CLI's lines."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


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


def refuse_object_storage(store: str | Path, what: str) -> None:
    """One line and exit 2 when ``store`` is an object-store URI and ``what`` needs a folder."""
    try:
        require_local_root(store, what)
    except NotOnObjectStorage as exc:
        fail(str(exc))


def unreachable(store: str | Path, exc: OSError) -> None:
    """One line and exit 2 for an object store that cannot be reached (endpoint, region, credentials)."""
    fail(f"store {store}: cannot reach it: {exc} (the AWS_* variables give the endpoint and credentials; "
         "docs/store.md#object-storage)")


def store_exists(st: Store) -> bool:
    """Whether the store is there: a folder, or on object storage anything under its prefix.
    An object store that cannot be reached (endpoint, credentials) is one line and exit 2."""
    if not st.remote:
        return st.root.is_dir()
    try:
        return st.location.exists()
    except OSError as exc:
        unreachable(st.uri, exc)
        raise  # unreachable


def reach_store(store: str | Path) -> Store:
    """``Store(store)``; an object store whose endpoint or region cannot be resolved (opening its
    file system already asks the network) is one line and exit 2, not a traceback."""
    try:
        return Store(store)
    except OSError as exc:
        unreachable(store, exc)
        raise  # unreachable


def existing_store(store: str | Path, local_for: str | None = None) -> Store:
    """The store a command reads: a folder or an object-store URI that exists, else one line and
    exit 2. ``local_for`` names what the command does when it needs a folder: an object-store
    URI is then refused before anything is read."""
    if local_for:
        refuse_object_storage(store, local_for)
    st = reach_store(store)
    if not store_exists(st):
        fail(f"store {store} does not exist")
    if not st.holds_pam_entries():  # a mistyped path to a dump or any other folder: read nothing, write nothing
        fail(f"{store} is not a pam store (no results/, runs/ or manifest/ in it): give the folder that "
             "`pam detect --store` wrote")
    return st


def store_config(path: Optional[Path], store: str | Path, **overrides) -> PamConfig:
    """The config of a command on ``store``: ``--config`` when given (one note when its sites differ
    from those the store's last scan used), else the store's remembered sites and summaries settings
    (``pam.store.analysis_config``), so that no command falls back to UTC clocks unasked."""
    from pam.store.analysis_config import site_differences, stored_analysis_config

    st = reach_store(store)
    stored = stored_analysis_config(st) if store_exists(st) else None
    if path is not None or stored is None:
        conf = cli_config(path, **overrides)
        differ = site_differences(conf, stored) if stored is not None else []
        if differ:
            err.print(f"[yellow]note:[/yellow] {path} sets other site clocks or positions than the store's last scan: "
                      f"{', '.join(differ)}; using {path}'s", highlight=False, soft_wrap=True)
        return conf
    remembered = stored.model_dump(mode="json", include={"sites", "summaries"})
    try:
        conf = load_config(None, overrides, defaults=remembered)
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable
    if conf.sites:
        err.print(f"[yellow]note:[/yellow] site clocks and positions as the store's last scan used them "
                  f"({', '.join(sorted(conf.sites))}); --config gives others", highlight=False, soft_wrap=True)
    return conf


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


StoreOpt = typer.Option(..., "--store", "-s", help="store folder (created if missing), or an object-store URI such "
                                                   "as s3://bucket/pam (docs/store.md#object-storage)")
StoreArg = typer.Argument(..., help="store folder, or an object-store URI such as s3://bucket/pam")
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config (see configs/detect.yaml)")
