"""A Prefect server owned by this process, for CLI runs when no PREFECT_API_URL is set.

Prefect's own answer to "no server configured" is a temporary server that a flow starts in a
subprocess. It has two gaps for us: it has no scheduler (so ``pam serve`` would never start a
scheduled run), and a ``kill -9`` of the process that started it leaves it running for ever.
``prefect_api()`` instead runs ``prefect server start`` on loopback for the duration of a
block, tied to this process by the kernel (it gets SIGTERM when we die, however we die).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class PrefectServerError(RuntimeError):
    """The local Prefect server did not start or did not answer."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM when the parent dies, even by SIGKILL."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def wait_healthy(api: str, proc: subprocess.Popen, timeout_s: float, log: Path | None = None) -> None:
    """Return once the server process ``proc`` answers ``API/health``; PrefectServerError when it
    exits first or does not answer within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise PrefectServerError(f"the local Prefect server exited (code {proc.returncode})"
                                     + (f"; see {log}" if log else ""))
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise PrefectServerError(f"the local Prefect server did not answer at {api} within {timeout_s:.0f} s")
        time.sleep(0.5)


@contextmanager
def local_prefect_server(timeout_s: float = 180.0) -> Iterator[tuple[str, int]]:
    """A ``prefect server start`` on loopback, for as long as the block runs; yields its API URL and pid.

    Prefect's own temporary server (what a flow starts when no ``PREFECT_API_URL`` is set) has
    no scheduler: a served deployment's cron would never create a run. This one is a full
    server (scheduler included, its database under ``PREFECT_HOME``). It is stopped when the
    block ends, and by the kernel if this process dies. Its log: PREFECT_HOME/pam-prefect-server.log.
    """
    from prefect.settings import PREFECT_HOME

    exe = Path(sys.executable).parent / "prefect"
    command = [str(exe) if exe.exists() else (shutil.which("prefect") or "prefect"),
               "server", "start", "--host", "127.0.0.1", "--port", str(free_port())]
    api = f"http://127.0.0.1:{command[-1]}/api"
    home = Path(PREFECT_HOME.value()).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    with open(home / "pam-prefect-server.log", "ab") as server_log:
        proc = subprocess.Popen(command, env=env, stdout=server_log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)
    try:
        wait_healthy(api, proc, timeout_s, home / "pam-prefect-server.log")
        yield api, proc.pid
    finally:
        for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
                proc.wait(grace)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue


def api_configured() -> bool:
    """Whether runs go to a Prefect server named by PREFECT_API_URL (environment or profile)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


@contextmanager
def prefect_api() -> Iterator[tuple[str | None, int | None]]:
    """Within the block, flows report to a Prefect server: the configured one (yields
    ``(None, None)``), else a local server started here (yields its API URL and pid) and
    stopped at the end; PREFECT_API_URL points at it meanwhile, for this process and its
    children."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if api_configured():
        yield None, None
        return
    with local_prefect_server() as (api, pid):
        os.environ["PREFECT_API_URL"] = api
        try:
            with temporary_settings({PREFECT_API_URL: api}):
                try:
                    yield api, pid
                finally:
                    _drain_to_server()
        finally:
            os.environ.pop("PREFECT_API_URL", None)


def _drain_to_server(timeout_s: float = 15.0) -> None:
    """Send the logs and events Prefect still holds while the server is up; otherwise they are
    retried against a stopped server at exit (a minute of "All connection attempts failed")."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        try:
            service.drain_all(timeout=timeout_s)
        except Exception:  # noqa: BLE001 - best effort: the run itself is finished
            pass


def quiet_prefect_defaults() -> None:
    """Environment defaults for a CLI flow run: no analytics, and time for a slow server start."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The temporary server Prefect starts when no PREFECT_API_URL is set gets 20 s by
    # default, which a busy machine can miss; a nightly job can afford to wait longer.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
