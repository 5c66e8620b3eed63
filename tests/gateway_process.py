"""The real gateway as a process (``python -m service serve``), for tests that kill it, cut it
off or run several side by side on one database."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import free_port, wait_until
from tests.fake_engine import MODEL

START_TIMEOUT_S = 60.0


class GatewayProcess:
    def __init__(self, data_dir: Path, database_url: str, engine_url: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        pools = [{"name": "default", "base_model": MODEL, "urls": [engine_url]}]
        self.env = {
            **os.environ,
            "LORAGATE_DATA_DIR": str(data_dir),
            "LORAGATE_DATABASE_URL": database_url,
            "LORAGATE_ENGINES": json.dumps(pools),
            "LORAGATE_HEALTH_PROBE_INTERVAL_S": "0.5",
            "LORAGATE_SNAPSHOT_REFRESH_S": "0.5",
            "LORAGATE_LOG_LEVEL": "WARNING",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "gateway.log"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--port", str(self.port)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    async def ready(self) -> None:
        async def answers() -> bool:
            assert self.process is not None and self.process.poll() is None, self.tail()
            with contextlib.suppress(httpx.HTTPError):
                async with httpx.AsyncClient(timeout=2) as client:
                    return (await client.get(f"{self.url}/readyz")).status_code == 200
            return False

        await wait_until(answers, timeout_s=START_TIMEOUT_S, what=f"the gateway\n{self.tail()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
