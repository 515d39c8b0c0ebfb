"""CLI commands, one module per area; see pam/cli.py."""
