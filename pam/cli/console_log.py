"""What a command-line run shows of the log: pam's own warnings apart, Prefect's INFO lines on request.

A nightly run logs through Prefect (``get_run_logger``), so pam's warnings would reach the
terminal as Prefect log lines, among Prefect's own "Beginning flow run ..." and "Finished in
state ..." lines. For a person at a terminal, ``pam detect`` instead

* collects the warnings (and errors) that pam's library code logs, whichever logger they go
  through (told apart by the source file of the logging call), and prints them itself after
  the run in a short block;
* keeps them, and the flows' own messages, off Prefect's console handler (they still go to
  the Prefect server and its UI with every other line of the run's log);
* raises Prefect's console handler to WARNING.

With ``--verbose`` the console shows the whole log, pam's lines included, as Prefect prints it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PAM_DIR = Path(__file__).resolve().parents[1]  # pam/, this module being in pam/cli/
CONSOLE_LEVEL_ENV = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"  # logging.yml's handlers.console.level


def _flows_dir() -> Path | None:
    spec = importlib.util.find_spec("flows")
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]).resolve() if locations else None


FLOWS_DIR = _flows_dir()


def _under(path: str, folder: Path | None) -> bool:
    return folder is not None and (folder == Path(path).resolve() or folder in Path(path).resolve().parents)


def logged_by_pam(record: logging.LogRecord) -> bool:
    """Whether pam's library code (``pam/``) made the logging call, through any logger."""
    return _under(record.pathname, PAM_DIR)


def logged_by_pam_or_flows(record: logging.LogRecord) -> bool:
    return logged_by_pam(record) or _under(record.pathname, FLOWS_DIR)


class PamWarnings(logging.Handler):
    """Collects the distinct messages of pam's warnings and errors, in the order they came."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if logged_by_pam(record):
            message = record.getMessage()
            if message not in self.messages:
                self.messages.append(message)


class _NotPam(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not logged_by_pam_or_flows(record)


@contextmanager
def pam_warnings_apart(hide: bool = True) -> Iterator[PamWarnings]:
    """Within the block, pam's warnings are collected (yielded) and, with ``hide``, kept off the
    handlers the root logger has now (Prefect's console, or Python's last-resort printing), with
    the flows' own messages.

    Import Prefect before entering, so that its console handler is among those handlers.
    """
    root = logging.getLogger()
    collector = PamWarnings()
    quiet = _NotPam()
    handlers = list(root.handlers) if hide else []
    for h in handlers:
        h.addFilter(quiet)
    root.addHandler(collector)
    try:
        yield collector
    finally:
        root.removeHandler(collector)
        for h in handlers:
            h.removeFilter(quiet)


@contextmanager
def prefect_console(verbose: bool) -> Iterator[None]:
    """Prefect's console handler shows only WARNING and above, or everything when ``verbose``.

    Sets the handler of this process (Prefect configures logging when first imported: import it
    before) and, for processes started meanwhile (Dask workers), the environment variable that
    Prefect's logging.yml reads; a level the user set in that variable is kept unless ``verbose``.
    """
    from prefect.logging.handlers import PrefectConsoleHandler

    level = logging.NOTSET if verbose else logging.WARNING
    before_env = os.environ.get(CONSOLE_LEVEL_ENV)
    if verbose or before_env is None:
        os.environ[CONSOLE_LEVEL_ENV] = logging.getLevelName(level) if level else "0"
    consoles = {h for name in ("", "prefect") for h in logging.getLogger(name).handlers
                if isinstance(h, PrefectConsoleHandler)}
    before = {h: h.level for h in consoles}
    for h in consoles:
        if verbose or before_env is None:
            h.setLevel(level)
    try:
        yield
    finally:
        for h, lvl in before.items():
            h.setLevel(lvl)
        if before_env is None:
            os.environ.pop(CONSOLE_LEVEL_ENV, None)
        else:
            os.environ[CONSOLE_LEVEL_ENV] = before_env


@contextmanager
def pam_info_to_stderr() -> Iterator[None]:
    """pam's INFO lines to stderr with a ``pam:`` prefix, for ``--verbose`` without Prefect."""
    logger = logging.getLogger("pam")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("pam: %(message)s"))
    before = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)
