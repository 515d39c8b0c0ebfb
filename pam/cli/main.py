"""The ``pam`` command: the app with every command registered, and its entry point."""

from __future__ import annotations

import os
import sys

# OpenMP threads that finish early spin-wait by default, and on a CPU shared with other
# work (a recorder box, a busy VM) those spinning threads hold the cores the others need:
# BirdNET on 2 threads ran 4x slower than LiteRT that way, and 1.8x faster with passive
# waiting (docs/benchmarks.md). libgomp reads this when torch loads it, so it is set before
# any command imports torch; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pam.cli import agile, analysis, detection, operations, store, training  # noqa: F401 - importing registers the commands
from pam.cli.app import app, err
from pam.store.results import OldLayoutError


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted; rerun the same command to resume (finished recordings are kept)")
        sys.exit(130)
    except OldLayoutError as exc:  # a store of an earlier layout: one line naming pam store migrate
        err.print(f"error: {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
