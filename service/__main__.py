"""``python -m service`` runs the CLI (same as the ``loragate`` command)."""

from service.cli.app import app

# Guarded: a worker process started with `spawn` (the schema checks) imports this module again.
if __name__ == "__main__":
    app()
