"""The ``pam`` command line: ``app`` holds the typer app and the helpers every command
shares, one module per area registers its commands, ``main`` assembles them."""
