"""The ``pam`` command: the app with every command registered, and its entry point."""

from __future__ import annotations

import sys

from pam.cli import analysis, detection, operations, store, training  # noqa: F401 - importing registers the commands
from pam.cli.app import app, err


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted; rerun the same command to resume (finished recordings are kept)")
        sys.exit(130)


if __name__ == "__main__":
    main()
