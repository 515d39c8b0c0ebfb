"""``python -m pam.cli``: the same as the ``pam`` command."""

from pam.cli.main import main

main()
