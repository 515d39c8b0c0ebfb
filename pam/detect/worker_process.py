"""A call run in a fresh worker process: how ``detect.devices`` puts one shard on each device.

``call_in_worker(fn, ...)`` starts a process with the ``spawn`` method (a new interpreter: no
forked torch thread pools or CUDA state), limits its torch threads, runs ``fn`` there and
returns its result. The worker's ``pam`` log lines come back through a pipe and are logged
here, so a run's printout stays one. When the worker raises, the error comes back as
``WorkerFailed`` with its text; when it dies without a word (kill -9, the OOM killer, a CUDA
abort), ``WorkerFailed`` says how it ended. The worker exits when its parent dies, so a killed
run leaves no process scoring on behind it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import Any, Callable

log = logging.getLogger("pam.detect.worker_process")
Logger = logging.Logger | logging.LoggerAdapter


class WorkerFailed(RuntimeError):
    """A worker process raised, or ended without a result."""


def cores_per_worker(workers: int, cores: int | None = None) -> int:
    """The cores this process may use (its CPU affinity) shared out among ``workers`` processes
    (at least one each)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def call_in_worker(fn: Callable[..., Any], args: tuple = (), kwargs: dict | None = None, *, name: str,
                   threads: int, logger: Logger | None = None,
                   on_progress: Callable[[int], None] | None = None) -> Any:
    """``fn(*args, **kwargs)`` in a new spawned process with ``threads`` torch threads; its result.

    ``fn`` and its arguments travel by pickle (``fn`` by name: a module-level function).
    What the worker passes to ``progress_to_parent`` is given to ``on_progress`` here.
    Raises ``WorkerFailed`` when the worker raises or dies.
    """
    logger = logger or log
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_worker_main, name=name, daemon=False,
                       args=(send, fn, args, kwargs or {}, threads, os.getpid()))
    proc.start()
    send.close()  # the worker holds the only sending end: its exit ends the loop below
    result: tuple | None = None
    try:
        while True:
            try:
                message = receive.recv()
            except EOFError:
                break
            if message[0] == "log":
                logger.log(message[1], "%s", message[2])
            elif message[0] == "progress":
                if on_progress is not None:
                    on_progress(message[1])
            else:
                result = message
    finally:
        receive.close()
        proc.join()
    if result is None:
        how = f"killed by signal {signal.Signals(-proc.exitcode).name}" if proc.exitcode and proc.exitcode < 0 \
            else f"exit code {proc.exitcode}"
        raise WorkerFailed(f"worker process {name} (pid {proc.pid}) ended without a result ({how})")
    if result[0] == "error":
        raise WorkerFailed(f"worker process {name}: {result[1]}")
    return result[1]


class _PipeHandler(logging.Handler):
    """Sends each log record's level and text to the parent (one message at a time)."""

    def __init__(self, send: Callable[[tuple], None]):
        super().__init__(logging.INFO)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send(("log", record.levelno, record.getMessage()))
        except Exception:  # noqa: BLE001 - a parent gone away; the work goes on, its commits stand
            pass


_to_parent: list[Callable[[tuple], None]] = []  # in a worker: how to send the parent a message


def progress_to_parent(amount: int) -> None:
    """In a worker process: pass ``amount`` to the parent's ``on_progress`` (nothing elsewhere)."""
    for send in _to_parent:
        try:
            send(("progress", amount))
        except Exception:  # noqa: BLE001 - a parent gone away; the work goes on
            pass


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)  # the run that started this worker is gone; its lock with it


def _worker_main(conn, fn: Callable[..., Any], args: tuple, kwargs: dict, threads: int, parent: int) -> None:
    lock = threading.Lock()

    def send(message: tuple) -> None:
        with lock:
            conn.send(message)

    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="pam-parent-watch").start()
    pam_log = logging.getLogger("pam")
    pam_log.addHandler(_PipeHandler(send))
    pam_log.setLevel(logging.INFO)
    pam_log.propagate = False
    _to_parent.append(send)
    import torch

    torch.set_num_threads(threads)
    try:
        send(("result", fn(*args, **kwargs)))
    except BaseException as exc:  # noqa: BLE001 - all of it goes back to the parent, which reports it
        text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        send(("error", text))
    finally:
        conn.close()
