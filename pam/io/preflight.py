"""Checks of a run's arguments before anything starts: no store is created, no server started.

``pam scan`` and ``pam detect`` call these first, so that a mistyped dump, a store inside a
dump, an unloadable model or a setting the model refuses is one line and exit status 2 at
once, instead of a Prefect run that records a failed run in a new store. The path checks
import neither torch nor Prefect, so they answer within the time Python takes to start. The
library's stages check the same things again when they run (``pam.io.manifest`` builds its
errors from the same functions; a dump can vanish between check and scan).
"""

from __future__ import annotations

import os
from pathlib import Path

from pam.config import ConfigError, nested_path
from pam.store import Store


class BadArgument(ConfigError):
    """A dump or store argument that cannot be used; the message names it and the fix."""


def dump_folder_problem(dump: Path) -> str | None:
    """Why ``dump`` (an absolute path) cannot be scanned, or None."""
    if not dump.exists():
        return "dump folder does not exist"
    if not dump.is_dir():
        return "dump is not a folder; give the folder the recorder's card was copied into"
    if not os.access(dump, os.R_OK | os.X_OK):
        return "dump folder is not readable (permission denied)"
    try:
        str(dump).encode("utf-8")
    except UnicodeEncodeError:
        return "the dump folder's name is not valid UTF-8; give it a UTF-8 name"
    return None


def store_inside_dump(store_root: Path, dump: str | os.PathLike) -> str | None:
    """The error when the store is the dump or lies inside it (pam never writes into input
    folders), or None."""
    if nested_path(store_root, dump):
        return (f"{store_root}: the store must not be inside the dump {Path(dump).expanduser().resolve()} "
                "(pam never writes into input folders)")
    return None


def check_scan_inputs(dumps: list[str | os.PathLike], store: Store) -> list[Path]:
    """Every dump is a readable folder, the store a folder or not there yet, and outside every
    dump; returns the dumps as absolute paths. Raises BadArgument."""
    if not store.remote and store.root.exists() and not store.root.is_dir():
        raise BadArgument(f"{store.root}: the store is a file, not a folder; give --store a folder "
                          "(created if missing)")
    folders = [Path(d).expanduser().resolve() for d in dumps]
    for d in folders:
        problem = dump_folder_problem(d)
        if problem:
            raise BadArgument(f"{str(d)!r}: {problem}" if "UTF-8" in problem else f"{d}: {problem}")
        inside = None if store.remote else store_inside_dump(store.root, d)
        if inside:
            raise BadArgument(inside)
    return folders
