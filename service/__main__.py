"""``python -m service`` runs the CLI (same as the ``loragate`` command)."""

from service.cli.app import app

app()
