"""`loragate serve` with its managed vLLM and the bundled model, run as the README says, for the
real tier's tests: the process, its CLI, its records and its logs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import training_cache

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveGateway:
    def __init__(self, workdir: Path, model_cache: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.engine_port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_path = workdir / "loragate.db"
        self.env = dict(os.environ)
        self.env.update(
            LORAGATE_DATA_DIR=str(workdir),
            LORAGATE_DATABASE_URL=f"sqlite+aiosqlite:///{self.db_path}",
            LORAGATE_MANAGED_ENGINE__PORT=str(self.engine_port),
            LORAGATE_MANAGED_ENGINE__MODEL_DIR=str(model_cache),
            LORAGATE_MANAGED_ENGINE__RESTART_BACKOFF_S="0.5",
            # A probe a second keeps vLLM's worker spinning on its queue (it busy-waits for a
            # second after each request): a core gone from the rest of the suite beside it.
            LORAGATE_HEALTH_PROBE_INTERVAL_S="5",
            LORAGATE_FIRST_BYTE_TIMEOUT_S="120",
            LORAGATE_IDLE_TIMEOUT_S="60",
            LORAGATE_TRAINING_CACHE_DIR=str(training_cache()),
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.log = (workdir / "gateway.log").open("wb")

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "service", *args],
            env=self.env, cwd=self.workdir, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return done.stdout

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(self.port)],
            env=self.env, cwd=self.workdir, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.tail()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AssertionError(f"gateway not ready in {timeout_s}s\n{self.tail()}")

    def engine_pid(self) -> int:
        out = subprocess.run(
            ["pgrep", "-f", f"vllm.entrypoints.openai.api_server.*--port {self.engine_port}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return int(out.split()[0])

    def tail(self) -> str:
        self.log.flush()
        text = (self.workdir / "gateway.log").read_text(errors="replace")
        engine_log = self.workdir / "logs" / "engine.log"
        engine = engine_log.read_text(errors="replace")[-3000:] if engine_log.exists() else ""
        return text[-4000:] + "\n--- engine ---\n" + engine

    def records(self) -> list[dict[str, Any]]:
        with sqlite3.connect(self.db_path) as conn:
            conn.row_factory = sqlite3.Row
            query = "SELECT * FROM request_records ORDER BY created_at"
            return [dict(r) for r in conn.execute(query)]

    def wait_record(
        self, match: Callable[[dict[str, Any]], bool], timeout_s: float = 20.0
    ) -> dict[str, Any]:
        """The newest record that matches, waiting for the shipper to move it into the database."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [r for r in self.records() if match(r)]
            if found:
                return found[-1]
            assert time.monotonic() < deadline, "no matching request record"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


@contextlib.contextmanager
def serving(gateway: LiveGateway) -> Iterator[LiveGateway]:
    """Migrate, start and wait until ready, as the README says; stopped on the way out."""
    gateway.cli("db", "upgrade")
    gateway.start()
    try:
        gateway.wait_ready()
        yield gateway
    finally:
        gateway.stop()
